"""`agentmesh sidecar`: run the data plane beside one agent."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import click

from agentmesh.cli._options import EXIT_CONFIG, EXIT_STARTUP, LOG_LEVELS
from agentmesh.config import ConfigError
from agentmesh.telemetry.logs import configure_logging


@click.command()
@click.option(
    "-c",
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default="agent.yaml",
    show_default=True,
    help="The agent's sidecar configuration (agent.yaml).",
)
@click.option("--check", is_flag=True, help="Validate the configuration and contract, print a summary, and exit.")
@click.option("--log-level", type=click.Choice(LOG_LEVELS), help="Overrides telemetry.log_level.")
def sidecar(config_path: Path, check: bool, log_level: str | None) -> None:
    """Run the sidecar beside one agent.

    Serves the agent's typed gRPC services on the inbound port with contract
    validation both ways, agentmesh.v1.Agent, grpc.health.v1 and reflection;
    egress for the agent's own calls (gRPC and HTTP/JSON); and the admin
    endpoint (/metrics, /readyz, /config_dump, agent card).

    Exit codes: 0 stopped cleanly, 2 invalid configuration, 3 start-up failure
    (contract does not compile, port in use).
    """
    from sidecar.app import StartupError, run
    from sidecar.config.bootstrap import Bootstrap

    try:
        bootstrap = Bootstrap.load(config_path)
    except ConfigError as exc:
        click.echo(f"error: invalid sidecar configuration:\n{exc}", err=True)
        sys.exit(EXIT_CONFIG)
    configure_logging(log_level or bootstrap.telemetry.log_level, component="sidecar", agent=bootstrap.agent.name)
    try:
        if check:
            from sidecar.app import load_contract

            contract = load_contract(bootstrap)
            click.echo(f"{config_path}: ok — agent {bootstrap.agent.name} {bootstrap.agent.version}")
            for path, method in contract.methods.items():
                kind = "stream" if method.server_streaming else "unary"
                click.echo(f"  {path}  {method.input.full_name} -> {method.output.full_name}  ({kind})")
            return
        asyncio.run(run(bootstrap, config_path=config_path))
    except StartupError as exc:
        click.echo(f"error: {config_path}: {exc}", err=True)
        sys.exit(EXIT_STARTUP)
    except OSError as exc:
        click.echo(f"error: cannot start sidecar: {exc}", err=True)
        sys.exit(EXIT_STARTUP)
