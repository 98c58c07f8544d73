"""Runs one load against one target and returns a `LoadResult`, whichever generator sends it.

h2load (C, nghttp2) is the generator whenever it is installed, so the
client is never the bottleneck; the Python grpc.aio generator
(bench/grpc_client.py, a separate process) covers `xds:///` targets, the
streaming scenario, callers that must present a TLS client certificate
(h2load has no option for one), and stands in for h2load when it is absent;
every result says which generator sent it in `tool`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import h2load
from bench.latency import LatencySummary

ROOT = Path(__file__).resolve().parents[1]
H2LOAD = "h2load"
PYTHON_GRPC = "grpc.aio (Python; h2load absent)"
PYTHON_XDS = "grpc.aio (Python, xds:///)"
PYTHON_MTLS = "grpc.aio (Python, mTLS client certificate)"
# A run may take its duration plus this long (start-up, draining in-flight requests) before it is killed.
RUN_GRACE_S = 60.0


@dataclass(frozen=True)
class LoadResult:
    """One run: what was offered, what came back, and how long it took."""

    tool: str
    rate: float | None  # req/s offered; None for closed loop
    duration_s: float
    ok: int
    errors: int
    achieved_rps: float
    latency: LatencySummary
    error_detail: Mapping[str, int] = field(default_factory=dict)

    @property
    def sent(self) -> int:
        return self.ok + self.errors

    def to_dict(self) -> dict[str, Any]:
        return {
            "tool": self.tool,
            "rate": self.rate,
            "duration_s": self.duration_s,
            "ok": self.ok,
            "errors": self.errors,
            "achieved_rps": self.achieved_rps,
            "latency": self.latency.to_dict(),
            "error_detail": dict(self.error_detail),
        }


@dataclass(frozen=True)
class ClientCertificate:
    """A caller's workload identity for mutual TLS: the folder the Rotator keeps it in, and whom to expect.

    `directory` holds `key.pem`, `cert-chain.pem` and `root-cert.pem`
    (agentmesh/identity/files.py); `server_name` is the DNS SAN the server's
    certificate must carry (`<agent>.<team>.<trust domain>`), since gRPC
    clients verify a server by DNS name.
    """

    directory: Path
    server_name: str

    def options(self) -> list[str]:
        """The generator's command-line options for this identity."""
        return ["--tls-dir", str(self.directory), "--tls-server-name", self.server_name]


class LoadError(RuntimeError):
    """The load generator failed to run (not: some requests failed)."""


def result_from_h2load(summary: h2load.Summary, log: h2load.RequestLog, load: h2load.Load) -> LoadResult:
    """Combines h2load's totals with its per-request log."""
    # h2load's `failed` includes its `errored` and `timeout` requests.
    errors = summary.failed + log.non_2xx
    detail: dict[str, int] = {}
    if summary.failed:
        detail["h2load_failed"] = summary.failed
    for status, count in log.statuses.items():
        if status >= 0 and not 200 <= status < 300:
            detail[f"http_{status}"] = count
    ok = len(log.latencies_us)
    elapsed = summary.elapsed_s or load.duration_s
    return LoadResult(
        tool=H2LOAD,
        rate=load.rate,
        duration_s=elapsed,
        ok=ok,
        errors=errors,
        achieved_rps=ok / elapsed if elapsed else 0.0,
        latency=LatencySummary.from_micros(log.latencies_us),
        error_detail=detail,
    )


def run_h2load(
    url: str,
    load: h2load.Load,
    *,
    body: bytes,
    headers: Sequence[str] = h2load.GRPC_HEADERS,
    http1: bool = False,
    work_dir: Path,
) -> LoadResult:
    """Runs h2load once; `body` is sent as is (frame it with h2load.grpc_frame for gRPC)."""
    executable = h2load.binary()
    if executable is None:
        raise LoadError("h2load is not installed (Debian package nghttp2-client)")
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        body_file, log_file = Path(tmp) / "body.bin", Path(tmp) / "requests.log"
        body_file.write_bytes(body)
        args = h2load.argv(
            url, load, body=body_file, log_file=log_file, headers=headers, http1=http1, executable=executable
        )
        try:
            done = subprocess.run(
                args, capture_output=True, text=True, timeout=load.duration_s + load.warmup_s + RUN_GRACE_S
            )
        except subprocess.TimeoutExpired as exc:
            raise LoadError(f"h2load did not finish: {' '.join(args)}") from exc
        try:
            summary = h2load.parse_summary(done.stdout)
        except ValueError as exc:
            raise LoadError(f"{exc}\n{done.stderr[-2000:]}") from exc
        if log_file.exists():
            with log_file.open() as lines:
                log = h2load.parse_log(lines)
        else:  # nothing was sent (e.g. no connection)
            log = h2load.parse_log(())
    return result_from_h2load(summary, log, load)


def _python_client(mode: str, options: Sequence[str], *, env: Mapping[str, str] | None, timeout: float) -> Any:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.json"
        args = [sys.executable, "-m", "bench.grpc_client", mode, *options, "--out", str(out)]
        try:
            done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired as exc:
            raise LoadError(f"bench.grpc_client {mode} did not finish in {timeout:.0f}s") from exc
        if done.returncode != 0 or not out.exists():
            raise LoadError(f"bench.grpc_client {mode} failed ({done.returncode}):\n{done.stderr[-3000:]}")
        return json.loads(out.read_text())


def client_options(
    target: str,
    method: str,
    body_file: Path,
    *,
    authority: str | None,
    metadata: Mapping[str, str],
    certificate: ClientCertificate | None = None,
) -> list[str]:
    options = ["--target", target, "--method", method, "--body-file", str(body_file)]
    if authority:
        options += ["--authority", authority]
    for key, value in metadata.items():
        options += ["--metadata", f"{key}={value}"]
    if certificate is not None:
        options += certificate.options()
    return options


def run_python_unary(
    target: str,
    method: str,
    *,
    body: bytes,
    rate: float | None,
    duration_s: float,
    concurrency: int = 32,
    authority: str | None = None,
    metadata: Mapping[str, str] | None = None,
    env: Mapping[str, str] | None = None,
    certificate: ClientCertificate | None = None,
    tool: str = PYTHON_GRPC,
    work_dir: Path,
) -> LoadResult:
    """Unary load from the Python generator; `body` is the serialized message (not framed).

    With `certificate` the generator calls over mutual TLS, presenting that identity.
    """
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        body_file = Path(tmp) / "body.bin"
        body_file.write_bytes(body)
        options = client_options(
            target, method, body_file, authority=authority, metadata=metadata or {}, certificate=certificate
        )
        options += ["--duration", str(duration_s), "--channels", "2"]
        options += ["--rate", str(rate)] if rate else ["--concurrency", str(concurrency)]
        data = _python_client("unary", options, env=env, timeout=duration_s + RUN_GRACE_S)
    latencies = data["latencies_us"]
    errors = dict(data["errors"])
    elapsed = float(data["elapsed_s"]) or duration_s
    return LoadResult(
        tool=tool,
        rate=rate,
        duration_s=elapsed,
        ok=len(latencies),
        errors=sum(errors.values()),
        achieved_rps=len(latencies) / elapsed,
        latency=LatencySummary.from_micros(latencies),
        error_detail=errors,
    )


def run_python_ttfm(
    target: str, method: str, *, body: bytes, count: int, metadata: Mapping[str, str] | None = None, work_dir: Path
) -> tuple[LatencySummary, dict[str, int]]:
    """Time to first message of `count` sequential streaming calls."""
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        body_file = Path(tmp) / "body.bin"
        body_file.write_bytes(body)
        options = client_options(target, method, body_file, authority=None, metadata=metadata or {})
        data = _python_client("ttfm", [*options, "--count", str(count)], env=None, timeout=RUN_GRACE_S + count)
    return LatencySummary.from_micros(data["latencies_us"]), dict(data["errors"])


def start_python_streams(
    target: str,
    method: str,
    *,
    body_file: Path,
    out: Path,
    count: int,
    open_rate: float,
    timeout_s: float,
    channels: int,
    metadata: Mapping[str, str] | None = None,
) -> subprocess.Popen[str]:
    """Starts the streams generator; it prints `open <n>` once every stream has opened or failed."""
    options = client_options(target, method, body_file, authority=None, metadata=metadata or {})
    options += ["--count", str(count), "--open-rate", str(open_rate), "--timeout", str(timeout_s)]
    options += ["--channels", str(channels), "--out", str(out)]
    return subprocess.Popen(
        [sys.executable, "-m", "bench.grpc_client", "streams", *options],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
