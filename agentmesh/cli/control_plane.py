"""`agentmesh control-plane`: run the control plane."""

from __future__ import annotations

import asyncio
import sys

import click

from agentmesh.cli._options import EXIT_CONFIG, EXIT_STARTUP, log_level_option
from agentmesh.config.source import parse_duration
from agentmesh.identity.spiffe import DEFAULT_TRUST_DOMAIN, check_trust_domain
from agentmesh.telemetry.logs import configure_logging


def _trust_domain(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        return check_trust_domain(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _ttl(ctx: click.Context, param: click.Parameter, value: str) -> float:
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    if seconds < 1:
        raise click.BadParameter("must be at least 1s")
    return seconds


@click.command("control-plane")
@click.option(
    "--listen",
    default="127.0.0.1:15010",
    show_default=True,
    help="gRPC address: xDS (ADS), sidecar registration and the admin API.",
)
@click.option(
    "--http",
    "http_address",
    default="127.0.0.1:18080",
    show_default=True,
    help="HTTP address: /healthz, /readyz, /metrics, /sd/prometheus.",
)
@click.option(
    "--db",
    default=".agentmesh/control-plane.db",
    show_default=True,
    help="SQLite file holding the versioned policy store (':memory:' for none).",
)
@click.option(
    "--token", envvar="AGENTMESH_TOKEN", required=True, help="Admin API token clients must send (env AGENTMESH_TOKEN)."
)
@click.option(
    "--registry-ttl",
    type=float,
    default=15.0,
    show_default=True,
    help="Seconds without a sidecar report before its instance is dropped.",
)
@click.option(
    "--gateway-port",
    type=click.IntRange(1, 65535),
    default=15443,
    show_default=True,
    help="Port of the listener given to Envoy gateways (xDS node ids starting with 'gateway~').",
)
@click.option(
    "--trust-domain",
    default=DEFAULT_TRUST_DOMAIN,
    show_default=True,
    callback=_trust_domain,
    help="Trust domain of workload identities: spiffe://<trust-domain>/team/<team>/agent/<name>.",
)
@click.option(
    "--ca-dir",
    default=None,
    help="Directory of the certificate authority's keys and certificates (default: '<db>.ca' beside --db).",
)
@click.option(
    "--ca-cert",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="A root CA certificate (PEM) to run under: the control plane signs its own intermediate with it.",
)
@click.option(
    "--ca-key",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="The unencrypted PEM key of --ca-cert; read only to sign the intermediate.",
)
@click.option(
    "--workload-cert-ttl",
    default="24h",
    show_default=True,
    callback=_ttl,
    help="Lifetime of workload certificates, e.g. 24h, 90m; sidecars renew them at about half of it.",
)
@click.option(
    "--gateway-mtls/--gateway-plaintext",
    default=False,
    show_default=True,
    help="Envoy gateways require callers to present a mesh certificate (mutual TLS, SDS); "
    "plaintext leaves callers anonymous to access policies.",
)
@log_level_option
def control_plane(
    listen: str,
    http_address: str,
    db: str,
    token: str,
    registry_ttl: float,
    gateway_port: int,
    trust_domain: str,
    ca_dir: str | None,
    ca_cert: str | None,
    ca_key: str | None,
    workload_cert_ttl: float,
    gateway_mtls: bool,
    log_level: str,
) -> None:
    """Run the control plane.

    Sidecars register here and receive routing, retry, timeout, access and
    canary policy over xDS; Envoy and proxyless gRPC clients read the same
    resources. Policy is stored versioned in SQLite and survives restarts;
    the registry is rebuilt as sidecars reconnect.

    It is also the mesh's certificate authority: sidecars enroll with a join
    token (`agentmesh token create`) and renew short-lived certificates for
    their SPIFFE IDs. The CA is its own root, made on first start in --ca-dir,
    or an intermediate under --ca-cert/--ca-key.

    Exit codes: 0 stopped cleanly, 2 invalid options, 3 start-up failure.

    Example: agentmesh control-plane --token "$AGENTMESH_TOKEN" --db /var/lib/agentmesh/cp.db
    """
    from control_plane.app import ControlPlaneSettings, run

    configure_logging(log_level, component="control-plane")
    if (ca_cert is None) != (ca_key is None):
        raise click.UsageError("--ca-cert and --ca-key go together: a root certificate and its key")
    settings = ControlPlaneSettings(
        listen=listen,
        http=http_address,
        db=db,
        token=token,
        registry_ttl=registry_ttl,
        gateway_port=gateway_port,
        trust_domain=trust_domain,
        ca_dir=ca_dir or "",
        ca_cert=ca_cert or "",
        ca_key=ca_key or "",
        workload_cert_ttl=workload_cert_ttl,
        gateway_mtls=gateway_mtls,
    )
    try:
        asyncio.run(run(settings))
    except ValueError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_CONFIG)
    except OSError as exc:
        click.echo(f"error: cannot start the control plane: {exc}", err=True)
        sys.exit(EXIT_STARTUP)
