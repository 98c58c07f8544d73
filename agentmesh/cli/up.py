"""`agentmesh up`: run a whole mesh locally (agentmesh.local.mesh), with a live table."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import click

from agentmesh.config import ConfigError
from agentmesh.local.control_plane import check_policies
from agentmesh.local.mesh import DEFAULT_READY_TIMEOUT, DEFAULT_REFRESH, EXIT_CONFIG, LocalMesh, UpOptions
from agentmesh.local.meshfile import MeshFile
from agentmesh.local.state import DEFAULT_STATE_DIR, StateDir
from agentmesh.telemetry.logs import configure_logging
from sidecar.config.bootstrap import Bootstrap

DEFAULT_MESH = Path(__file__).resolve().parents[2] / "examples" / "mesh.yaml"


@click.command()
@click.option(
    "-f",
    "--file",
    "mesh_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=DEFAULT_MESH,
    show_default="examples/mesh.yaml",
    help="The mesh file listing agents, their sidecars, replicas and policies.",
)
@click.option(
    "--state-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=DEFAULT_STATE_DIR,
    show_default=True,
    help="Where the control plane's database, the admin token, status.json and generated configs go.",
)
@click.option(
    "--logs",
    "log_dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Where each process's output goes.  [default: STATE_DIR/logs]",
)
@click.option("--no-prometheus", is_flag=True, help="Do not start Prometheus even when it is installed.")
@click.option(
    "--ready-timeout",
    type=click.FloatRange(min=1),
    default=DEFAULT_READY_TIMEOUT,
    show_default=True,
    help="Seconds every replica gets to become ready at start-up.",
)
@click.option(
    "--refresh",
    type=click.FloatRange(min=0.1),
    default=DEFAULT_REFRESH,
    show_default=True,
    help="Seconds between table refreshes.",
)
def up(
    mesh_path: Path,
    state_dir: Path,
    log_dir: Path | None,
    no_prometheus: bool,
    ready_timeout: float,
    refresh: float,
) -> None:
    """Run a mesh locally: a control plane, every agent with its sidecars, and Prometheus.

    \b
    The embedded control plane keeps policy in STATE_DIR/control-plane.db;
    its admin token for this run is printed once and saved in STATE_DIR/token
    (AGENTMESH_TOKEN=$(cat .agentmesh/token) agentmesh policy get). Every
    sidecar registers with it; the mesh file's policies are applied once
    every agent is ready. A table of the agents (replicas, health, requests/s,
    error rate, p99, restarts) is refreshed every 2 s on a terminal; otherwise
    it is printed once, then one line per change. STATE_DIR/status.json lists
    every process with its PID and addresses.

    Crashed processes are restarted with exponential backoff; agents with
    `replicas: {min, max}` are scaled on calls in flight. Ctrl-C or SIGTERM
    stops everything cleanly (sidecars drain first); no process is left
    behind. Exit codes: 0 stopped cleanly, 2 invalid mesh, sidecar or policy
    file, 3 start-up failure (a port taken, an agent never ready).
    """
    try:
        mesh = MeshFile.load(mesh_path)
        bootstraps = {agent.name: Bootstrap.load(agent.sidecar) for agent in mesh.agents}
        check_policies(mesh.policies)
    except ConfigError as exc:
        click.echo(f"error: invalid mesh:\n{exc}", err=True)
        sys.exit(EXIT_CONFIG)
    state = StateDir.at(state_dir, logs=log_dir)
    state.prepare()
    # Our own logs (the control plane's included) go to a file: the terminal belongs to the table.
    log_file = (state.logs / "agentmesh-up.log").open("a")
    configure_logging("info", component="agentmesh-up", stream=log_file, access_log=False)
    options = UpOptions(
        mesh_path=mesh_path,
        state=state,
        tty=sys.stdout.isatty(),
        refresh=refresh,
        ready_timeout=ready_timeout,
        prometheus=not no_prometheus,
    )
    try:
        code = asyncio.run(_run(LocalMesh(mesh, bootstraps, options, echo=click.echo, error=_error, clear=click.clear)))
    finally:
        log_file.close()
    sys.exit(code)


def _error(text: str) -> None:
    click.echo(text, err=True)


async def _run(mesh: LocalMesh) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return await mesh.run(stop)
