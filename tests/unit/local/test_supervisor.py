"""The local supervisor with real child processes."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from agentmesh.local.meshfile import MeshFile
from agentmesh.local.supervisor import Supervised, Supervisor

ROOT = Path(__file__).resolve().parents[3]


async def wait_until(predicate: Callable[[], bool], timeout: float = 10) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


async def test_crashed_process_is_restarted_with_backoff(tmp_path: Path) -> None:
    exits: list[tuple[str, int, float]] = []
    supervisor = Supervisor(
        backoff_start=0.01, backoff_max=0.05, on_exit=lambda item, code, delay: exits.append((item.name, code, delay))
    )
    crashing = Supervised("crasher", [sys.executable, "-c", "import sys; sys.exit(3)"], tmp_path)
    await supervisor.add(crashing)
    await wait_until(lambda: crashing.restarts >= 3)
    await supervisor.stop(grace=5)
    # Every exit is reported with its code and the (growing, capped) delay before the restart.
    assert exits[:3] == [("crasher", 3, 0.01), ("crasher", 3, 0.02), ("crasher", 3, 0.04)]
    assert all(delay <= 0.05 for _, _, delay in exits)


async def test_backoff_starts_over_after_a_process_ran_long_enough(tmp_path: Path) -> None:
    delays: list[float] = []
    supervisor = Supervisor(
        backoff_start=0.01, backoff_max=1.0, stable_after=0.0, on_exit=lambda item, code, delay: delays.append(delay)
    )
    crashing = Supervised("crasher", [sys.executable, "-c", "import sys; sys.exit(1)"], tmp_path)
    await supervisor.add(crashing)
    await wait_until(lambda: len(delays) >= 3)
    await supervisor.stop(grace=5)
    assert set(delays) == {0.01}


async def test_removed_process_is_stopped_and_not_restarted(tmp_path: Path) -> None:
    exits: list[str] = []
    supervisor = Supervisor(backoff_start=0.01, on_exit=lambda item, code, delay: exits.append(item.name))
    sleeper = Supervised("sleeper", [sys.executable, "-c", "import time; time.sleep(600)"], tmp_path)
    other = Supervised("other", [sys.executable, "-c", "import time; time.sleep(600)"], tmp_path)
    await supervisor.add(sleeper)
    await supervisor.add(other)
    pid = sleeper.pid
    assert pid is not None
    await supervisor.remove(sleeper, grace=5)
    assert not sleeper.running and sleeper.pid is None
    assert supervisor.processes == [other] and other.running
    await asyncio.sleep(0.1)
    assert exits == [] and sleeper.restarts == 0
    await supervisor.stop(grace=5)
    assert not other.running


async def test_a_command_that_cannot_start_is_an_error_at_once(tmp_path: Path) -> None:
    supervisor = Supervisor()
    try:
        with pytest.raises(OSError):
            await supervisor.add(Supervised("missing", [str(tmp_path / "no-such-binary")], tmp_path))
    finally:
        await supervisor.stop(grace=1)


async def test_stop_reaches_grandchildren_and_leaves_nothing_running(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    script = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
        "time.sleep(600)\n"
    )
    supervisor = Supervisor()
    parent = Supervised("parent", [sys.executable, "-c", script], tmp_path, log_path=tmp_path / "parent.log")
    await supervisor.add(parent)
    await wait_until(lambda: pid_file.exists() and pid_file.read_text() != "")
    grandchild = int(pid_file.read_text())
    await supervisor.stop(grace=5)
    assert not parent.running
    await wait_until(lambda: not _alive(grandchild))


async def test_process_ignoring_sigterm_is_killed_after_grace(tmp_path: Path) -> None:
    script = (
        "import signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('ready', flush=True)\n"
        "time.sleep(600)\n"
    )
    log = tmp_path / "stubborn.log"
    supervisor = Supervisor()
    stubborn = Supervised("stubborn", [sys.executable, "-c", script], tmp_path, log_path=log)
    await supervisor.add(stubborn)
    await wait_until(lambda: log.exists() and "ready" in log.read_text())
    await supervisor.stop(grace=0.5)
    assert stubborn.process is not None and stubborn.process.returncode == -9


def test_example_mesh_file_is_valid() -> None:
    mesh = MeshFile.load(ROOT / "examples" / "mesh.yaml")
    assert {a.name for a in mesh.agents} >= {"planner", "researcher", "writer", "summarizer"}
    assert all(a.argv({"port": "1"})[0] == sys.executable for a in mesh.agents)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is gone for our purposes once reaped or defunct.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] != "Z"
    except FileNotFoundError:
        return False
