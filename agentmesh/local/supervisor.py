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
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("agentmesh.local")

DEFAULT_BACKOFF_START = 0.5
DEFAULT_BACKOFF_MAX = 30.0
DEFAULT_STOP_GRACE = 15.0
# A process that ran this long before exiting crashed afresh: its restart backoff starts over.
DEFAULT_STABLE_AFTER = 10.0
# The exit code recorded when a restart could not even spawn the command (as a shell's "not found").
EXIT_NOT_STARTED = 127

# Called when a supervised process exits on its own: the item, its exit code and the delay before the restart.
ExitListener = Callable[["Supervised", int, float], None]


@dataclass
class Supervised:
    """One supervised command and its restart history."""

    name: str
    argv: Sequence[str]
    cwd: Path
    env: Mapping[str, str] = field(default_factory=dict)
    log_path: Path | None = None
    # Runs before each start, the first and every restart (e.g. a fresh join token for a sidecar).
    prepare: Callable[[], Awaitable[None]] | None = None
    restarts: int = 0
    process: asyncio.subprocess.Process | None = None
    started_at: float = 0.0
    stopping: bool = False

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    @property
    def pid(self) -> int | None:
        """The current process id while it runs."""
        return self.process.pid if self.running and self.process is not None else None


class Supervisor:
    """Keeps a set of processes running until `stop()`; `remove()` stops one for good."""

    def __init__(
        self,
        *,
        backoff_start: float = DEFAULT_BACKOFF_START,
        backoff_max: float = DEFAULT_BACKOFF_MAX,
        stable_after: float = DEFAULT_STABLE_AFTER,
        on_exit: ExitListener | None = None,
    ) -> None:
        self._backoff_start = backoff_start
        self._backoff_max = backoff_max
        self._stable_after = stable_after
        self._on_exit = on_exit
        self._stopping = False
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self.processes: list[Supervised] = []

    async def add(self, item: Supervised) -> None:
        """Starts `item` and restarts it whenever it exits, until it is removed or everything stops."""
        if self._stopping:
            raise RuntimeError("the supervisor is stopping")
        await self._spawn(item)
        self.processes.append(item)
        self._tasks[id(item)] = asyncio.create_task(self._watch(item))

    async def _spawn(self, item: Supervised) -> None:
        if item.prepare is not None:
            await item.prepare()
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
            item.started_at = asyncio.get_running_loop().time()
        finally:
            if output:
                output.close()

    async def _watch(self, item: Supervised) -> None:
        loop = asyncio.get_running_loop()
        backoff = self._backoff_start
        while True:
            code = await item.process.wait() if item.process is not None else EXIT_NOT_STARTED
            if self._stopping or item.stopping:
                return
            if loop.time() - item.started_at >= self._stable_after:
                backoff = self._backoff_start
            item.restarts += 1
            log.warning("%s exited with %s; restarting in %.1fs (restart %d)", item.name, code, backoff, item.restarts)
            if self._on_exit is not None:
                self._on_exit(item, code, backoff)
            await asyncio.sleep(backoff)
            if self._stopping or item.stopping:
                return
            backoff = min(backoff * 2, self._backoff_max)
            try:
                await self._spawn(item)
            except OSError as exc:
                # The command cannot even start (missing binary, bad cwd): keep trying on the backoff.
                log.warning("%s could not be started: %s", item.name, exc)
                item.process = None

    async def remove(self, item: Supervised, grace: float = DEFAULT_STOP_GRACE) -> None:
        """Stops one process for good: SIGTERM to its group, SIGKILL after `grace`; no restart."""
        item.stopping = True
        task = self._tasks.pop(id(item), None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await _terminate([item], grace)
        if item in self.processes:
            self.processes.remove(item)

    async def stop(self, grace: float = DEFAULT_STOP_GRACE) -> None:
        """SIGTERM every process group (in reverse start order), SIGKILL what is left after `grace`."""
        self._stopping = True
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await _terminate(list(reversed(self.processes)), grace)


async def _terminate(items: Sequence[Supervised], grace: float) -> None:
    for item in items:
        _signal_group(item, signal.SIGTERM)
    waits = [item.process.wait() for item in items if item.process is not None]
    try:
        await asyncio.wait_for(asyncio.gather(*waits), grace)
    except TimeoutError:
        for item in items:
            if item.running:
                log.warning("%s did not stop within %.0fs; killing it", item.name, grace)
                _signal_group(item, signal.SIGKILL)
        await asyncio.gather(*(i.process.wait() for i in items if i.process is not None))


def _signal_group(item: Supervised, sig: int) -> None:
    if item.process is None or item.process.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(item.process.pid, sig)
