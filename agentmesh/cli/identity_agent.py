"""`agentmesh identity-agent`: certificates for Envoy (SDS) and proxyless gRPC clients (files)."""

from __future__ import annotations

import asyncio
import dataclasses
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from agentmesh.cli._options import EXIT_STARTUP, log_level_option
from agentmesh.telemetry.logs import configure_logging

if TYPE_CHECKING:
    from agentmesh.identity.control_plane_tls import ControlPlaneTls


def _token(join_token: str | None, join_token_file: Path | None) -> str | None:
    if join_token and join_token_file:
        raise click.UsageError("give --join-token or --join-token-file, not both")
    if join_token_file is None:
        return join_token or None
    try:
        token = join_token_file.read_text().strip()
    except OSError as exc:
        raise click.BadParameter(
            f"cannot read {join_token_file}: {exc.strerror or exc}", param_hint="--join-token-file"
        ) from None
    if not token:
        raise click.BadParameter(f"{join_token_file} is empty", param_hint="--join-token-file")
    return token


def _control_plane_tls(ca_file: Path | None, server_name: str | None) -> ControlPlaneTls | None:
    from agentmesh.identity.control_plane_tls import ControlPlaneTls, TrustBundleError

    if ca_file is None:
        if server_name:
            raise click.UsageError("--server-name needs --ca-file: it is the name of the control plane's certificate")
        return None
    try:
        return ControlPlaneTls.from_file(ca_file, server_name=server_name)
    except TrustBundleError as exc:
        raise click.BadParameter(str(exc), param_hint="--ca-file") from None


@click.command("identity-agent")
@click.option(
    "--control-plane",
    envvar="AGENTMESH_CONTROL_PLANE",
    required=True,
    help="The control plane's gRPC address (env AGENTMESH_CONTROL_PLANE).",
)
@click.option(
    "--join-token",
    envvar="AGENTMESH_JOIN_TOKEN",
    help="Join token from `agentmesh token create --agent NAME` (env AGENTMESH_JOIN_TOKEN); "
    "not needed while DIR holds an unexpired certificate.",
)
@click.option(
    "--join-token-file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Read the join token from this file instead.",
)
@click.option(
    "--dir",
    "directory",
    type=click.Path(path_type=Path, file_okay=False),
    required=True,
    help="Where key.pem, cert-chain.pem and root-cert.pem are kept (created with mode 0700).",
)
@click.option(
    "--sds-listen",
    help="SDS address for Envoy: unix:<path> or a loopback host:port.  [default: unix:DIR/sds.sock]",
)
@click.option("--no-sds", is_flag=True, help="Serve no SDS: only write the files (proxyless gRPC clients).")
@click.option(
    "--grpc-bootstrap",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Also write a proxyless gRPC client's xDS bootstrap here (use it as GRPC_XDS_BOOTSTRAP).",
)
@click.option("--node-id", default="", help="The bootstrap's xDS node id.  [default: proxyless~<agent>]")
@click.option(
    "--refresh-interval",
    type=click.FloatRange(min=1),
    default=10.0,
    show_default=True,
    help="Seconds between gRPC's re-reads of the files (the bootstrap's file_watcher refresh_interval).",
)
@click.option("--metrics-listen", default="", help="host:port for Prometheus metrics (off by default).")
@click.option(
    "--ca-file",
    envvar="AGENTMESH_CA_FILE",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Trust bundle (agentmesh ca bundle) to verify the control plane with: TLS to its secure port "
    "(--secure-listen); the join token then travels encrypted (env AGENTMESH_CA_FILE). "
    "With --grpc-bootstrap the client's xDS connection uses TLS too.",
)
@click.option(
    "--server-name",
    envvar="AGENTMESH_SERVER_NAME",
    help="With --ca-file: the name the control plane's certificate must carry (env AGENTMESH_SERVER_NAME).  "
    "[default: control-plane.<trust domain of the bundle>]",
)
@log_level_option
def identity_agent(
    control_plane: str,
    join_token: str | None,
    join_token_file: Path | None,
    directory: Path,
    sds_listen: str | None,
    no_sds: bool,
    grpc_bootstrap: Path | None,
    node_id: str,
    refresh_interval: float,
    metrics_listen: str,
    ca_file: Path | None,
    server_name: str | None,
    log_level: str,
) -> None:
    """Hold a mesh identity for Envoy or a proxyless gRPC client.

    Our sidecars get their certificates themselves; Envoy and proxyless gRPC
    clients cannot. This agent does it for them, next to them, like Istio's
    node agent: it enrolls with the control plane's CA using a join token
    (the private key is made here and never leaves the machine), renews the
    certificate before it expires, and hands it out two ways:

    \b
    - SDS for Envoy: secrets `default` (key and chain) and `ROOTCA` (trust
      bundle), pushed again on every rotation. Envoy's bootstrap reaches it
      through a static cluster named `sds-grpc` (docs/gateway.md).
    - Files for proxyless gRPC: key.pem, cert-chain.pem, root-cert.pem in
      DIR, switched together on rotation, read by gRPC's `file_watcher`
      certificate provider; --grpc-bootstrap writes a bootstrap naming them.

    SDS listens only on a unix socket (mode 0600) or a loopback address.
    With --ca-file it talks to the control plane's secure port over TLS, so
    the join token travels encrypted to a verified server (docs/identity.md).

    Exit codes: 0 stopped cleanly (SIGTERM/SIGINT), 2 invalid options, 3
    start-up failure (enrollment refused, control plane unreachable, address
    in use).

    Example: agentmesh identity-agent --control-plane cp:15010 --join-token-file join.txt --dir /run/agentmesh
    """
    from agentmesh.identity.agent import IdentityAgentError, IdentityAgentSettings, run

    token = _token(join_token, join_token_file)
    tls = _control_plane_tls(ca_file, server_name)
    configure_logging(log_level, component="identity-agent")
    settings = IdentityAgentSettings(
        control_plane=control_plane,
        directory=directory,
        join_token=token,
        grpc_bootstrap=grpc_bootstrap,
        node_id=node_id,
        refresh_interval=refresh_interval,
        metrics_listen=metrics_listen,
        control_plane_tls=tls,
    )
    if not no_sds:
        settings = dataclasses.replace(settings, sds_listen=sds_listen or settings.default_sds_listen())
    elif sds_listen:
        raise click.UsageError("--sds-listen and --no-sds contradict each other")
    try:
        asyncio.run(run(settings))
    except IdentityAgentError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_STARTUP)
    except OSError as exc:
        click.echo(f"error: cannot start the identity agent: {exc}", err=True)
        sys.exit(EXIT_STARTUP)
