"""h2load (Debian `nghttp2-client`) as the gRPC load generator: its command line and its output (pure).

h2load is not gRPC-aware, so a gRPC unary call is spelled out: POST to
`/<package.Service>/<Method>` with `content-type: application/grpc`,
`te: trailers` and a body file holding one length-prefixed message
(`grpc_frame`). It reports HTTP status only (a gRPC error is still HTTP
200), so the caller cross-checks successes against what the agent served.

Open loop is `--rps` per client over `-c` clients, with `-m` streams per
connection as a cap on requests in flight. Each client sends on its own
timer, so clients started together send in bursts (ten clients at 100 req/s
hit the server with ten requests every 10 ms, which shows up as latency);
connections are therefore opened one per `1/rate` (`-r 1 --rate-period`),
which interleaves their timers into an even stream. h2load refuses `-r`
with `-D`, so an open-loop run is `-n rate x duration` requests; closed-loop
runs use `-D`. Latency comes from `--log-file` (one line per request: start
time in µs since the epoch, HTTP status or -1, µs to the end of the
response).
"""

from __future__ import annotations

import math
import re
import shutil
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

GRPC_HEADERS = ("content-type: application/grpc", "te: trailers")
# Cap on requests in flight per connection in open-loop runs: high enough that a slow
# proxy shows up as latency, not as a rate h2load silently cannot keep.
OPEN_LOOP_STREAMS = 256
_UNIT_SECONDS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}
_DURATION = re.compile(r"^([0-9.]+)(us|ms|s)$")


def binary() -> str | None:
    """The h2load executable on PATH, if any."""
    return shutil.which("h2load")


def grpc_frame(message: bytes) -> bytes:
    """One gRPC length-prefixed message: flag 0 (uncompressed), 4-byte big-endian length, bytes."""
    return b"\x00" + struct.pack(">I", len(message)) + message


@dataclass(frozen=True)
class Load:
    """What to send: open loop at `rate` req/s, or closed loop (rate None) with clients x streams in flight."""

    duration_s: float
    rate: float | None = None
    clients: int = 4
    streams: int = 16
    warmup_s: float = 0.0

    def per_client_rps(self) -> float:
        if self.rate is None:
            raise ValueError("a closed-loop load has no rate")
        return self.rate / self.clients

    def requests(self) -> int:
        """Requests in an open-loop run: rate x duration, at least one per client."""
        if self.rate is None:
            raise ValueError("a closed-loop load has no request count")
        return max(self.clients, round(self.rate * self.duration_s))


def open_loop(rate: float, duration_s: float) -> Load:
    """A fixed-rate load, spread over enough clients that each sends at most 100 req/s."""
    clients = max(2, math.ceil(rate / 100))
    return Load(duration_s=duration_s, rate=rate, clients=clients, streams=OPEN_LOOP_STREAMS)


def argv(
    url: str,
    load: Load,
    *,
    body: Path,
    log_file: Path,
    headers: Iterable[str] = GRPC_HEADERS,
    http1: bool = False,
    executable: str = "h2load",
) -> list[str]:
    """The h2load command line for one run."""
    args = [executable, "-c", str(load.clients), "-t", "1"]
    if load.rate is None:
        args += ["-D", _seconds(load.duration_s)]
        if load.warmup_s > 0:
            args += ["--warm-up-time", _seconds(load.warmup_s)]
    else:
        stagger_ms = max(1, round(1000 / load.rate))
        args += ["-n", str(load.requests()), "-r", "1", "--rate-period", f"{stagger_ms}ms"]
        args += ["--rps", _number(load.per_client_rps())]
    if http1:
        args.append("--h1")
    else:
        args += ["-m", str(load.streams)]
    args += ["-d", str(body), "--log-file", str(log_file)]
    for header in headers:
        args += ["-H", header]
    args.append(url)
    return args


def _seconds(value: float) -> str:
    """h2load durations: an integer with a unit."""
    if value >= 1 and float(value).is_integer():
        return f"{int(value)}s"
    return f"{max(1, round(value * 1000))}ms"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.3f}"


def parse_duration(text: str) -> float:
    """'708us', '26.63ms', '4.00s' -> seconds."""
    found = _DURATION.match(text.strip())
    if found is None:
        raise ValueError(f"not an h2load duration: {text!r}")
    return float(found.group(1)) * _UNIT_SECONDS[found.group(2)]


@dataclass(frozen=True)
class Summary:
    """The totals h2load prints at the end of a run."""

    elapsed_s: float
    rps: float
    total: int
    started: int
    done: int
    succeeded: int
    failed: int
    errored: int
    timeout: int
    status_2xx: int = 0
    status_other: int = 0
    mean_request_s: float = math.nan


_FINISHED = re.compile(r"^finished in (\S+), ([0-9.]+) req/s")
_REQUESTS = re.compile(
    r"^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout"
)
_STATUS = re.compile(r"^status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx")
_REQUEST_TIME = re.compile(r"^time for request:\s+(\S+)\s+(\S+)\s+(\S+)")


def parse_summary(output: str) -> Summary:
    """Reads h2load's standard output; raises ValueError when the totals are missing (h2load failed)."""
    finished = requests = status = request_time = None
    for line in output.splitlines():
        line = line.strip()
        finished = finished or _FINISHED.match(line)
        requests = requests or _REQUESTS.match(line)
        status = status or _STATUS.match(line)
        request_time = request_time or _REQUEST_TIME.match(line)
    if finished is None or requests is None:
        tail = "\n".join(output.strip().splitlines()[-5:])
        raise ValueError(f"h2load printed no totals:\n{tail}")
    total, started, done, succeeded, failed, errored, timeout = (int(v) for v in requests.groups())
    ok2xx, r3, r4, r5 = (int(v) for v in status.groups()) if status else (0, 0, 0, 0)
    return Summary(
        elapsed_s=parse_duration(finished.group(1)),
        rps=float(finished.group(2)),
        total=total,
        started=started,
        done=done,
        succeeded=succeeded,
        failed=failed,
        errored=errored,
        timeout=timeout,
        status_2xx=ok2xx,
        status_other=r3 + r4 + r5,
        mean_request_s=parse_duration(request_time.group(3)) if request_time else math.nan,
    )


@dataclass(frozen=True)
class RequestLog:
    """The per-request lines of `--log-file`."""

    starts_us: tuple[int, ...] = ()
    latencies_us: tuple[int, ...] = ()
    failed: int = 0
    non_2xx: int = 0
    statuses: dict[int, int] = field(default_factory=dict)

    @property
    def span_s(self) -> float:
        """Seconds from the first request's start to the last one's."""
        if len(self.starts_us) < 2:
            return 0.0
        return (max(self.starts_us) - min(self.starts_us)) / 1e6


def parse_log(lines: Sequence[str] | Iterable[str]) -> RequestLog:
    """Successful requests' start times and latencies; failed (-1) and non-2xx ones counted apart."""
    starts: list[int] = []
    latencies: list[int] = []
    statuses: dict[int, int] = {}
    failed = non_2xx = 0
    for line in lines:
        parts = line.split("\t")
        if len(parts) < 3:
            continue
        try:
            start, status, took = int(parts[0]), int(parts[1]), int(parts[2])
        except ValueError:
            continue
        statuses[status] = statuses.get(status, 0) + 1
        if status < 0:
            failed += 1
        elif not 200 <= status < 300:
            non_2xx += 1
        else:
            starts.append(start)
            latencies.append(took)
    return RequestLog(tuple(starts), tuple(latencies), failed, non_2xx, statuses)
