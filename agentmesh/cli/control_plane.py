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


def _secure_listen(ctx: click.Context, param: click.Parameter, value: str) -> str:
    host, sep, port = value.rpartition(":")
    if value and (not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535):
        raise click.BadParameter(f"{value!r} is not host:port, e.g. 127.0.0.1:15012")
    return value


def _sans(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> tuple[str, ...]:
    from agentmesh.identity.control_plane_tls import TrustBundleError, check_server_name

    try:
        return tuple(check_server_name(name) for name in value)
    except TrustBundleError as exc:
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
@click.option(
    "--secure-listen",
    default="",
    callback=_secure_listen,
    metavar="HOST:PORT",
    help="Also serve every gRPC service on this address with TLS (e.g. 127.0.0.1:15012), with a certificate "
    "of the control plane's own CA; clients verify it with the trust bundle (agentmesh ca bundle). Off by default.",
)
@click.option(
    "--secure-san",
    "secure_sans",
    multiple=True,
    callback=_sans,
    metavar="NAME",
    help="A DNS name or IP address clients dial the secure port by, added to its certificate "
    "(which always names control-plane.<trust-domain>); repeatable.",
)
@click.option("--secure-cert-ttl", default="24h", callback=_ttl, hidden=True)
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
    secure_listen: str,
    secure_sans: tuple[str, ...],
    secure_cert_ttl: float,
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

    --listen is plaintext: keep it on a trusted network, or add --secure-listen
    (TLS, the server authenticated by the mesh's CA) and give clients the
    trust bundle: the --ca-file option of agentmesh commands, a sidecar's
    control_plane.ca_file (docs/identity.md).

    Exit codes: 0 stopped cleanly, 2 invalid options, 3 start-up failure.

    Example: agentmesh control-plane --token "$AGENTMESH_TOKEN" --db /var/lib/agentmesh/cp.db
    """
    from control_plane.app import ControlPlaneSettings, run

    configure_logging(log_level, component="control-plane")
    if (ca_cert is None) != (ca_key is None):
        raise click.UsageError("--ca-cert and --ca-key go together: a root certificate and its key")
    if secure_sans and not secure_listen:
        raise click.UsageError("--secure-san names the secure port's certificate: give --secure-listen too")
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
        secure_listen=secure_listen,
        secure_sans=secure_sans,
        secure_cert_ttl=secure_cert_ttl,
    )
    try:
        asyncio.run(run(settings))
    except ValueError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_CONFIG)
    except OSError as exc:
        click.echo(f"error: cannot start the control plane: {exc}", err=True)
        sys.exit(EXIT_STARTUP)
