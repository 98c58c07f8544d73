"""Scenario 3: server streams through the sidecar.

- Time to first message: sequential `Ticks` calls (first tick sent at once)
  straight to the backend and through a sidecar; the difference is what the
  sidecar adds before a caller sees its first token.
- Many open streams: `--streams` calls held open at once through one fresh
  sidecar (every feature on, AccessPolicy from the control plane), each
  receiving a small tick every `stream_interval_ms`. Reported: the sidecar's
  RSS before, when all are open and at its peak; errors; the message rate
  while all were open against the rate offered. The same again through the
  bare grpc.aio proxy (bench/floor.py): the memory an open stream costs any
  grpc.aio proxy, before the sidecar's features.

The Python gRPC client drives both (h2load cannot hold server streams open
or time the first message).
"""

from __future__ import annotations

import json
import logging
import math
import select
import time
from typing import Any

from bench.backend import TICKS_PATH
from bench.footprint import Watch, mib, rss_bytes
from bench.loadgen import LoadError, run_python_ttfm, start_python_streams
from bench.scenarios.hop import STREAMS_AGENT, HopRig, bench_messages, echo_request
from bench.settings import Settings
from bench.topology import CLIENT_AGENT, SOURCE_HEADER, Sidecar, policy_in_force, start_bench_sidecar, wait_until

log = logging.getLogger("bench.streaming")

TICK_BYTES = 64
CLIENT_CHANNELS = 10
STREAM_DEADLINE_GRACE_S = 60.0


def tick_request(count: int, interval_ms: int) -> bytes:
    request: Any = bench_messages().tick_request(
        id="bench", count=count, interval_ms=interval_ms, tick_bytes=TICK_BYTES
    )
    return bytes(request.SerializeToString())


def start_streams_sidecar(settings: Settings, rig: HopRig) -> Sidecar:
    sidecar = start_bench_sidecar(
        settings.work, STREAMS_AGENT, upstream=rig.backend.address, control_plane=rig.mesh_cp.address
    )
    probe = echo_request(settings)
    wait_until(
        lambda: policy_in_force(sidecar.inbound, probe),
        "the streams sidecar enforcing the AccessPolicy from xDS",
    )
    return sidecar


def time_to_first_message(settings: Settings, rig: HopRig, sidecar: Sidecar) -> dict[str, Any]:
    body = tick_request(1, 0)
    metadata = {SOURCE_HEADER: CLIENT_AGENT}
    found: dict[str, Any] = {"calls": settings.ttfm_calls}
    for name, target in (("direct", rig.backend.address), ("sidecar", sidecar.inbound)):
        latency, errors = run_python_ttfm(
            target, TICKS_PATH, body=body, count=settings.ttfm_calls, metadata=metadata, work_dir=settings.work
        )
        found[name] = {"latency": latency.to_dict(), "errors": errors}
    if found["direct"]["latency"]["count"] and found["sidecar"]["latency"]["count"]:
        found["added"] = {
            key: found["sidecar"]["latency"][key] - found["direct"]["latency"][key]
            for key in ("p50_ms", "p90_ms", "p99_ms")
        }
    return found


def open_streams(settings: Settings, rig: HopRig, address: str, pid: int) -> dict[str, Any]:
    """`settings.streams` server streams held open through the proxy at `address` (process `pid`)."""
    interval_ms = settings.stream_interval_ms
    ticks = max(2, int(settings.stream_hold_s * 1000 / interval_ms) + 1)
    body_file = settings.work / "ticks.bin"
    body_file.write_bytes(tick_request(ticks, interval_ms))
    out = settings.work / "streams.json"
    open_s = settings.streams / settings.stream_open_rate
    timeout = open_s + settings.stream_hold_s + STREAM_DEADLINE_GRACE_S
    rss_before = mib(rss_bytes(pid))
    rss_open = math.nan
    counters_before = rig.backend.counters()
    with Watch({"proxy": pid, "backend": rig.backend.pid}, interval=0.25) as watch:
        client = start_python_streams(
            address,
            TICKS_PATH,
            body_file=body_file,
            out=out,
            count=settings.streams,
            open_rate=settings.stream_open_rate,
            timeout_s=timeout,
            channels=CLIENT_CHANNELS,
            metadata={SOURCE_HEADER: CLIENT_AGENT},
        )
        opened = _wait_for_line(client.stdout, "open ", timeout)
        if opened is not None:
            rss_open = mib(rss_bytes(pid))
        try:
            _, stderr = client.communicate(timeout=timeout + 30)
        except Exception:
            client.kill()
            _, stderr = client.communicate()
    if client.returncode != 0 or not out.exists():
        raise LoadError(f"streams client failed ({client.returncode}): {stderr[-2000:]}")
    data = json.loads(out.read_text())
    counters = rig.backend.counters()
    steady_rate = data["steady_messages"] / data["steady_span_s"] if data["steady_span_s"] > 0 else math.nan
    usage = watch.usage
    return {
        "streams": settings.streams,
        "open_rate": settings.stream_open_rate,
        "interval_ms": interval_ms,
        "ticks_per_stream": ticks,
        "opened": data["opened"],
        "completed": data["completed"],
        "errors": sum(data["errors"].values()),
        "error_detail": data["errors"],
        "error_examples": data.get("error_examples", {}),
        "messages": data["messages"],
        "open_s": data["open_s"],
        "elapsed_s": data["elapsed_s"],
        "offered_rate": settings.streams * 1000 / interval_ms,
        "steady_rate": steady_rate,
        "backend_streams": counters["streams_opened"] - counters_before["streams_opened"],
        "rss_before_mb": rss_before,
        "rss_all_open_mb": rss_open,
        "rss_peak_mb": usage["proxy"].rss_peak_mb if "proxy" in usage else math.nan,
        "proxy_cpu_s": usage["proxy"].cpu_s if "proxy" in usage else math.nan,
        "backend_rss_peak_mb": usage["backend"].rss_peak_mb if "backend" in usage else math.nan,
        "machine_busy_cores": watch.machine_cores,
    }


def _wait_for_line(stream: Any, prefix: str, timeout: float) -> str | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([stream], [], [], 0.5)
        if ready:
            line = stream.readline()
            if not line:
                return None
            if line.startswith(prefix):
                return str(line)
    return None


def run(settings: Settings, rig: HopRig) -> dict[str, Any]:
    sidecar = start_streams_sidecar(settings, rig)
    try:
        results: dict[str, Any] = {"ttfm": time_to_first_message(settings, rig, sidecar)}
        proxies = {
            "open_streams": (sidecar.inbound, sidecar.pid),
            "open_streams_floor": (rig.floor.address, rig.floor.pid),
        }
        for key, (address, pid) in proxies.items():
            try:
                results[key] = open_streams(settings, rig, address, pid)
            except LoadError as exc:
                results[key] = {"error": str(exc), "streams": settings.streams}
        return results
    finally:
        sidecar.process.stop()
