"""Supervises local processes: start, restart on crash with backoff, stop cleanly.

Each process runs in its own process group so a stop reaches its children
too; SIGTERM first (sidecars drain), SIGKILL after a grace period. Nothing
is left running when `agentmesh up` exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("agentmesh.local")

DEFAULT_BACKOFF_START = 0.5
DEFAULT_BACKOFF_MAX = 30.0
DEFAULT_STOP_GRACE = 15.0


@dataclass
class Supervised:
    """One supervised command and its restart history."""

    name: str
    argv: Sequence[str]
    cwd: Path
    env: Mapping[str, str] = field(default_factory=dict)
    log_path: Path | None = None
    restarts: int = 0
    process: asyncio.subprocess.Process | None = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None


class Supervisor:
    """Keeps a set of processes running until `stop()`."""

    def __init__(
        self, *, backoff_start: float = DEFAULT_BACKOFF_START, backoff_max: float = DEFAULT_BACKOFF_MAX
    ) -> None:
        self._backoff_start = backoff_start
        self._backoff_max = backoff_max
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        self.processes: list[Supervised] = []

    async def add(self, item: Supervised) -> None:
        self.processes.append(item)
        await self._spawn(item)
        self._tasks.append(asyncio.create_task(self._watch(item)))

    async def _spawn(self, item: Supervised) -> None:
        output = open(item.log_path, "ab") if item.log_path else None  # noqa: SIM115, ASYNC230 - a log file the child inherits
        try:
            item.process = await asyncio.create_subprocess_exec(
                *item.argv,
                cwd=item.cwd,
                env={**os.environ, **item.env},
                stdout=output or asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            if output:
                output.close()

    async def _watch(self, item: Supervised) -> None:
        backoff = self._backoff_start
        while True:
            assert item.process is not None
            code = await item.process.wait()
            if self._stopping:
                return
            item.restarts += 1
            log.warning("%s exited with %s; restarting in %.1fs (restart %d)", item.name, code, backoff, item.restarts)
            await asyncio.sleep(backoff)
            if self._stopping:
                return
            backoff = min(backoff * 2, self._backoff_max)
            await self._spawn(item)

    async def stop(self, grace: float = DEFAULT_STOP_GRACE) -> None:
        """SIGTERM every process group (in reverse start order), SIGKILL what is left after `grace`."""
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        for item in reversed(self.processes):
            _signal_group(item, signal.SIGTERM)
        waits = [item.process.wait() for item in self.processes if item.process is not None]
        try:
            await asyncio.wait_for(asyncio.gather(*waits), grace)
        except TimeoutError:
            for item in self.processes:
                if item.running:
                    log.warning("%s did not stop within %.0fs; killing it", item.name, grace)
                    _signal_group(item, signal.SIGKILL)
            await asyncio.gather(*(i.process.wait() for i in self.processes if i.process is not None))
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _signal_group(item: Supervised, sig: int) -> None:
    if item.process is None or item.process.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(item.process.pid, sig)
