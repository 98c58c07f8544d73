"""`agentmesh control-plane`: run the control plane."""

from __future__ import annotations

import asyncio
import sys

import click

from agentmesh.telemetry.logs import configure_logging

EXIT_CONFIG = 2
EXIT_STARTUP = 3


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
    "--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info", show_default=True
)
def control_plane(
    listen: str, http_address: str, db: str, token: str, registry_ttl: float, gateway_port: int, log_level: str
) -> None:
    """Run the control plane.

    Sidecars register here and receive routing, retry, timeout, access and
    canary policy over xDS; Envoy and proxyless gRPC clients read the same
    resources. Policy is stored versioned in SQLite and survives restarts;
    the registry is rebuilt as sidecars reconnect.

    Exit codes: 0 stopped cleanly, 2 invalid options, 3 start-up failure.

    Example: agentmesh control-plane --token "$AGENTMESH_TOKEN" --db /var/lib/agentmesh/cp.db
    """
    from control_plane.app import ControlPlaneSettings, run

    configure_logging(log_level, component="control-plane")
    settings = ControlPlaneSettings(
        listen=listen, http=http_address, db=db, token=token, registry_ttl=registry_ttl, gateway_port=gateway_port
    )
    try:
        asyncio.run(run(settings))
    except ValueError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_CONFIG)
    except OSError as exc:
        click.echo(f"error: cannot start the control plane: {exc}", err=True)
        sys.exit(EXIT_STARTUP)
