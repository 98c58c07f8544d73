"""Where a Python process under load spends its time: py-spy from outside, summarised (parsing is pure).

`profile_process(pid, seconds, out)` runs `py-spy record --native --format
raw` (collapsed stacks: `frame;frame;... <samples>`, leaf last, C frames
included so grpc's Cython and the system calls under it show) on a running
process while the caller drives load, then `summarise` turns the stacks into
self and inclusive shares per function and self shares per source file: the
numbers a hot-spot report quotes. Without py-spy the profile says so and is
empty. py-spy is in the dev extras; it needs ptrace rights (root here).
py-spy counts some waits as activity: `epoll_wait` in grpc's poller thread
and bare libc addresses in idle executor threads are threads waiting, so
`stages` looks at the event loop's thread alone (the one that serves calls)
and files each of its samples under the step of the request path it was in.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SAMPLE_RATE = 200
TOP = 25
_LINE = re.compile(r"^(.*) (\d+)$")
_STDLIB = re.compile(r"/lib/python3\.\d+/(.*)$")
_FRAME = re.compile(r"^(?P<function>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def py_spy() -> str | None:
    found = shutil.which("py-spy")
    if found:
        return found
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else None


def _short(file: str) -> str:
    """A source path from the project, site-packages or the standard library, without the machine's prefix."""
    if "site-packages/" in file:
        return file.split("site-packages/", 1)[1]
    stdlib = _STDLIB.search(file)
    if stdlib is not None:
        return f"stdlib/{stdlib.group(1)}"
    for marker in ("/sidecar/", "/control_plane/", "/agentmesh/", "/bench/"):
        if marker in file:
            return marker.strip("/") + "/" + file.split(marker, 1)[1]
    return file


def frame_name(frame: str) -> tuple[str, str]:
    """'unary (sidecar/inbound/server.py:93)' -> ('unary (sidecar/inbound/server.py)', 'sidecar/inbound/server.py')."""
    found = _FRAME.match(frame.strip())
    if found is None:
        return frame.strip(), ""
    file = _short(found.group("file"))
    return f"{found.group('function')} ({file})", file


# Steps of the sidecar's request path by source file prefix, checked from the leaf up: a sample belongs to the
# innermost frame that names one (a sendmsg under grpc's Cython under the chain is grpc's).
STAGES = (
    ("grpc.aio call machinery (Cython, core, syscalls under it)", ("grpc/",)),
    (
        "tracing (OpenTelemetry spans, context)",
        ("sidecar/filters/tracing.py", "agentmesh/telemetry/tracing.py", "opentelemetry/"),
    ),
    (
        "contract validation (parse, protovalidate)",
        ("sidecar/contract/", "protovalidate/", "google/protobuf/", "google/_upb/"),
    ),
    ("access (RBAC, peer identity)", ("sidecar/filters/rbac.py", "sidecar/filters/authn.py")),
    ("metrics (prometheus-client)", ("sidecar/stats.py", "prometheus_client/")),
    ("access log", ("agentmesh/telemetry/logs.py",)),
    ("rest of the sidecar (chain, adapter, listener)", ("sidecar/",)),
    ("asyncio event loop", ("stdlib/asyncio/", "asyncio/", "_asynciomodule.c")),
)
OTHER_STAGE = "other"
# The event loop's thread: its stacks start at the interpreter's main module.
_MAIN_THREAD = "_run_module_as_main"


@dataclass(frozen=True)
class ProfileSummary:
    samples: int
    self_by_function: list[tuple[str, float]] = field(default_factory=list)
    total_by_function: list[tuple[str, float]] = field(default_factory=list)
    self_by_file: list[tuple[str, float]] = field(default_factory=list)
    # Shares of the event loop thread's samples per request-path step, and how many samples that thread had.
    stages: list[tuple[str, float]] = field(default_factory=list)
    loop_samples: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "self_by_function": [[n, round(s, 4)] for n, s in self.self_by_function],
            "total_by_function": [[n, round(s, 4)] for n, s in self.total_by_function],
            "self_by_file": [[n, round(s, 4)] for n, s in self.self_by_file],
            "loop_samples": self.loop_samples,
            "stages": [[n, round(s, 4)] for n, s in self.stages],
        }


def stage_of(files: Iterable[str]) -> str:
    """The request-path step of one sample, from its frames' files (root first, leaf last)."""
    for file in reversed(list(files)):
        for stage, prefixes in STAGES:
            if file.startswith(prefixes):
                return stage
    return OTHER_STAGE


def summarise(lines: Iterable[str], *, top: int = TOP) -> ProfileSummary:
    """Shares (0..1) of samples per function (self and inclusive) and per file (self)."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    files: Counter[str] = Counter()
    stages: Counter[str] = Counter()
    samples = 0
    for line in lines:
        found = _LINE.match(line.rstrip("\n"))
        if found is None:
            continue
        count = int(found.group(2))
        frames = [frame_name(f) for f in found.group(1).split(";") if f]
        # py-spy puts the process and thread first; they are not frames with a file.
        frames = [f for f in frames if f[1]]
        if not frames:
            continue
        samples += count
        leaf, leaf_file = frames[-1]
        own[leaf] += count
        files[leaf_file] += count
        for name in {name for name, _ in frames}:
            inclusive[name] += count
        if any(name.startswith(_MAIN_THREAD) for name, _ in frames):
            stages[stage_of(file for _, file in frames)] += count
    if not samples:
        return ProfileSummary(0)

    def shares(counter: Counter[str], total: int = samples) -> list[tuple[str, float]]:
        return [(name, count / total) for name, count in counter.most_common(top)]

    loop = sum(stages.values())
    by_stage = shares(stages, loop) if loop else []
    return ProfileSummary(samples, shares(own), shares(inclusive), shares(files), by_stage, loop)


class _Profile:
    def __init__(self, raw: Path, command: list[str] | None, reason: str = "") -> None:
        self.raw = raw
        self.command = command
        self.reason = reason
        self.process: subprocess.Popen[str] | None = None
        self.stderr = ""

    def result(self) -> dict[str, Any]:
        if self.command is None:
            return {"available": False, "reason": self.reason}
        if not self.raw.exists():
            return {"available": False, "reason": f"py-spy wrote nothing: {self.stderr[-500:]}"}
        with self.raw.open() as lines:
            summary = summarise(lines)
        return {"available": True, "tool": "py-spy", "rate_hz": SAMPLE_RATE, "raw": str(self.raw)} | summary.to_dict()


@contextlib.contextmanager
def profile_process(pid: int, seconds: float, out: Path) -> Iterator[_Profile]:
    """Samples `pid` for `seconds` while the block runs (the block should last about as long)."""
    executable = py_spy()
    raw = out.with_suffix(".txt")
    if executable is None:
        yield _Profile(raw, None, "py-spy is not installed (pip install py-spy)")
        return
    command = [
        executable,
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(max(1, round(seconds))),
        "--rate",
        str(SAMPLE_RATE),
        "--native",
        "--format",
        "raw",
        "--output",
        str(raw),
    ]
    profile = _Profile(raw, command)
    profile.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        yield profile
    finally:
        try:
            _, profile.stderr = profile.process.communicate(timeout=seconds + 30)
        except subprocess.TimeoutExpired:
            profile.process.kill()
            _, profile.stderr = profile.process.communicate()
