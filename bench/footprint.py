"""CPU seconds and resident memory of the processes under test, read from outside them.

psutil when it is installed (the dev extras), else Linux /proc directly.
`Watch` brackets one run: CPU seconds (user + system, all threads) spent
by each process between enter and exit, and its peak RSS over the run,
sampled every `interval` seconds by a background thread.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

psutil: Any
try:
    import psutil
except ImportError:  # pragma: no cover - depends on the environment
    psutil = None

# What reading a process that has gone away raises.
_GONE: tuple[type[BaseException], ...] = (OSError, ValueError) + ((psutil.Error,) if psutil is not None else ())

DEFAULT_INTERVAL = 0.1
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def source() -> str:
    return f"psutil {psutil.__version__}" if psutil is not None else "/proc"


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds the process has used so far."""
    if psutil is not None:
        times = psutil.Process(pid).cpu_times()
        return float(times.user + times.system)
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def rss_bytes(pid: int) -> int:
    """Resident set size now."""
    if psutil is not None:
        return int(psutil.Process(pid).memory_info().rss)
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE


def machine_busy_seconds() -> float:
    """CPU seconds all cores of the machine have spent busy (not idle or waiting on I/O) since boot."""
    first = Path("/proc/stat").read_text().splitlines()[0].split()
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in first[1:9])
    return (user + nice + system + irq + softirq + steal) / _CLOCK_TICKS


def mib(value: float) -> float:
    return value / (1024 * 1024)


@dataclass(frozen=True)
class Usage:
    """One process over one run."""

    cpu_s: float
    wall_s: float
    rss_start_mb: float
    rss_peak_mb: float
    rss_end_mb: float

    @property
    def cores(self) -> float:
        """Average cores busy: CPU seconds per wall second."""
        return self.cpu_s / self.wall_s if self.wall_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "cores": self.cores}


class Watch:
    """Context manager measuring named processes (name -> pid) over the enclosed block."""

    def __init__(self, pids: dict[str, int], *, interval: float = DEFAULT_INTERVAL) -> None:
        self._pids = dict(pids)
        self._interval = interval
        self._cpu: dict[str, float] = {}
        self._rss_start: dict[str, int] = {}
        self._peak: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = 0.0
        self.usage: dict[str, Usage] = {}
        self._machine = 0.0
        # Cores the whole machine kept busy over the block: ours, the load generator's and anyone else's.
        self.machine_cores = 0.0

    def _sample(self) -> None:
        for name, pid in self._pids.items():
            try:
                rss = rss_bytes(pid)
            except _GONE:
                continue
            if rss > self._peak.get(name, 0):
                self._peak[name] = rss

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._sample()

    def __enter__(self) -> Watch:
        for name, pid in self._pids.items():
            self._cpu[name] = cpu_seconds(pid)
            self._rss_start[name] = rss_bytes(pid)
        self._peak = dict(self._rss_start)
        self._machine = machine_busy_seconds()
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="bench-footprint", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        wall = time.monotonic() - self._started
        self.machine_cores = (machine_busy_seconds() - self._machine) / wall if wall > 0 else 0.0
        self._sample()
        for name, pid in self._pids.items():
            try:
                cpu, end = cpu_seconds(pid) - self._cpu[name], rss_bytes(pid)
            except _GONE:
                continue
            self.usage[name] = Usage(
                cpu_s=cpu,
                wall_s=wall,
                rss_start_mb=mib(self._rss_start[name]),
                rss_peak_mb=mib(self._peak.get(name, end)),
                rss_end_mb=mib(end),
            )
