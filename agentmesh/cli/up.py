"""`agentmesh up`: run a whole mesh locally, every agent with its sidecar."""

from __future__ import annotations

import asyncio
import signal
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import click

from agentmesh.config import ConfigError
from agentmesh.local.meshfile import MeshFile
from agentmesh.local.supervisor import Supervised, Supervisor
from sidecar.config.bootstrap import Bootstrap

DEFAULT_MESH = Path(__file__).resolve().parents[2] / "examples" / "mesh.yaml"
READY_TIMEOUT = 60.0


@click.command()
@click.option(
    "-f",
    "--file",
    "mesh_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=DEFAULT_MESH,
    show_default="examples/mesh.yaml",
    help="The mesh file listing agents and their sidecars.",
)
@click.option(
    "--logs",
    "log_dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path(".agentmesh/logs"),
    show_default=True,
    help="Where each process's output goes.",
)
def up(mesh_path: Path, log_dir: Path) -> None:
    """Start every agent of a mesh file with its sidecar, and keep them running.

    Crashed processes are restarted with exponential backoff. Ctrl-C or
    SIGTERM stops everything cleanly (sidecars drain first); no process is
    left behind. Exit codes: 0 stopped cleanly, 2 invalid mesh or sidecar
    configuration, 3 an agent never became ready.
    """
    try:
        mesh = MeshFile.load(mesh_path)
        configs = {agent.name: Bootstrap.load(agent.sidecar) for agent in mesh.agents}
    except ConfigError as exc:
        click.echo(f"error: invalid mesh:\n{exc}", err=True)
        sys.exit(2)
    log_dir.mkdir(parents=True, exist_ok=True)
    sys.exit(asyncio.run(_run(mesh, configs, mesh_path.resolve().parent, log_dir)))


async def _run(mesh: MeshFile, configs: dict[str, Bootstrap], base: Path, log_dir: Path) -> int:
    supervisor = Supervisor()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        for agent in mesh.agents:
            await supervisor.add(
                Supervised(f"{agent.name}/agent", agent.argv(), base, agent.env, log_dir / f"{agent.name}.agent.log")
            )
            await supervisor.add(
                Supervised(
                    f"{agent.name}/sidecar",
                    [sys.executable, "-m", "agentmesh.cli", "sidecar", "--config", str(agent.sidecar)],
                    base,
                    {},
                    log_dir / f"{agent.name}.sidecar.log",
                )
            )
        click.echo(f"starting {len(mesh.agents)} agents; logs in {log_dir}/")
        rows = []
        for agent in mesh.agents:
            bootstrap = configs[agent.name]
            admin = f"http://{bootstrap.listen.admin}"
            ready = await _wait_ready(f"{admin}/readyz", stop)
            status = "ready" if ready else "NOT READY"
            rows.append(
                (
                    agent.name,
                    bootstrap.agent.version,
                    bootstrap.listen.inbound,
                    bootstrap.listen.egress_http,
                    admin,
                    status,
                )
            )
            if stop.is_set():
                break
        _print_table(("AGENT", "VERSION", "INBOUND (gRPC)", "EGRESS (HTTP)", "ADMIN", "STATUS"), rows)
        if rows and all(r[-1] == "ready" for r in rows):
            click.echo(
                '\nTry:  grpcurl -plaintext -d \'{"topic": "service meshes", "max_sections": 2}\' '
                f"{rows[-1][2]} planning.v1.Planner/Plan"
            )
        click.echo("Ctrl-C to stop.")
        await stop.wait()
        return 0 if all(r[-1] == "ready" for r in rows) else 3
    finally:
        click.echo("stopping…")
        await supervisor.stop()
        click.echo("stopped.")


async def _wait_ready(url: str, stop: asyncio.Event) -> bool:
    deadline = asyncio.get_running_loop().time() + READY_TIMEOUT
    while asyncio.get_running_loop().time() < deadline and not stop.is_set():
        if await asyncio.to_thread(_ok, url):
            return True
        await asyncio.sleep(0.2)
    return False


def _ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _print_table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(str(r[i])) for r in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        click.echo("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)))
