"""Scenario 2: what the sidecar's gRPC → HTTP/JSON transcoding costs, on the researcher example agent.

`direct`: h2load over HTTP/1.1 POSTs the JSON body to the agent's
`/v1/search` (the method's google.api.http binding, which the sidecar uses
too). `sidecar`: h2load sends the same request as gRPC to the sidecar,
which validates it, transcodes it to that same HTTP/JSON call, parses and
validates the JSON answer and re-encodes it as protobuf. Both run open loop
at the same rate, then closed loop. The transcoding share of the overhead is
this path's added latency minus the gRPC passthrough hop's (scenario 1).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench import h2load
from bench.footprint import Watch
from bench.latency import LatencySummary
from bench.loadgen import LoadError, LoadResult, run_h2load, run_python_unary
from bench.settings import Settings
from tests.integration.mesh import Messages, agent_with_sidecar

log = logging.getLogger("bench.http_json")

SEARCH = "/research.v1.Researcher/Search"
HTTP_PATH = "/v1/search"
QUERY = {"query": "benchmarks of service meshes", "max_results": 5}
CLOSED_LOOP_CONNECTIONS = 16
# HTTP/1.1 carries one request at a time per connection, so an open-loop run needs enough
# connections to keep the rate even when each answer takes tens of milliseconds.
OPEN_LOOP_PER_CONNECTION_RPS = 5


def open_loop(rate: float, duration_s: float) -> h2load.Load:
    """The same connections for both paths: rate / 5 clients, one request in flight each."""
    clients = max(2, math.ceil(rate / OPEN_LOOP_PER_CONNECTION_RPS))
    return h2load.Load(duration_s=duration_s, rate=rate, clients=clients, streams=1)


@dataclass(frozen=True)
class _Path:
    """One way to call Search: where, what body, which protocol, and the proxies on the way."""

    url: str
    body: bytes
    headers: Sequence[str]
    http1: bool
    proxies: Mapping[str, int] = field(default_factory=dict)

    def run(self, load: h2load.Load, settings: Settings) -> LoadResult:
        return run_h2load(
            self.url, load, body=self.body, headers=self.headers, http1=self.http1, work_dir=settings.work
        )


def _agent_calls(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=5) as response:
        return int(sum(json.loads(response.read())["calls"].values()))


def run(settings: Settings) -> dict[str, Any]:
    messages = Messages()
    proto_body = messages("research.v1.SearchRequest", **QUERY).SerializeToString()
    json_body = json.dumps(QUERY).encode()
    results: dict[str, Any] = {"rate": settings.http_rate, "paths": {}, "request_json_bytes": len(json_body)}
    with contextlib.ExitStack() as stack:
        researcher = stack.enter_context(agent_with_sidecar(settings.work, "researcher"))
        assert researcher.agent is not None and researcher.sidecar is not None
        agent_port = researcher.agent_port
        agent_pid = researcher.agent.popen.pid
        paths = {
            "direct": _Path(
                url=f"http://127.0.0.1:{agent_port}{HTTP_PATH}",
                body=json_body,
                headers=("content-type: application/json",),
                http1=True,
            ),
            "sidecar": _Path(
                url=f"http://{researcher.ports.inbound_address}{SEARCH}",
                body=h2load.grpc_frame(proto_body),
                headers=h2load.GRPC_HEADERS,
                http1=False,
                proxies={"sidecar": researcher.sidecar.popen.pid},
            ),
        }
        for path in paths.values():  # warm both up before measuring either
            warm = h2load.Load(duration_s=settings.warmup_s, clients=4, streams=1)
            path.run(warm, settings)
        for mode in ("rate", "saturation"):
            for name, path in paths.items():
                log.info("http/json: %s %s", name, mode)
                if mode == "rate":
                    load = open_loop(settings.http_rate, settings.http_s)
                else:
                    # One request in flight per connection on both paths (HTTP/1.1 cannot do more).
                    load = h2load.Load(duration_s=settings.http_s, clients=CLOSED_LOOP_CONNECTIONS, streams=1)
                before = _agent_calls(agent_port)
                with Watch({**path.proxies, "agent": agent_pid}) as watch:
                    try:
                        result = path.run(load, settings)
                    except LoadError as exc:
                        results["paths"].setdefault(name, {})[mode] = {"error": str(exc)}
                        continue
                served = _agent_calls(agent_port) - before
                cpu = sum(u.cpu_s for n, u in watch.usage.items() if n in path.proxies)
                results["paths"].setdefault(name, {})[mode] = {
                    "load": result.to_dict(),
                    "served_by_agent": served,
                    "unserved_successes": max(0, result.ok - served),
                    "usage": {n: u.to_dict() for n, u in watch.usage.items()},
                    "machine_busy_cores": watch.machine_cores,
                    "proxy_cpu_s_per_1k": cpu / served * 1000 if path.proxies and served else math.nan,
                }
        # The real client of the sidecar path, once, to prove the answers are valid gRPC.
        with contextlib.suppress(LoadError):
            check = run_python_unary(
                researcher.ports.inbound_address,
                SEARCH,
                body=proto_body,
                rate=None,
                duration_s=1.0,
                concurrency=2,
                work_dir=settings.work,
            )
            results["grpc_check"] = {"ok": check.ok, "errors": check.errors, "error_detail": dict(check.error_detail)}
    try:
        side = LatencySummary(**results["paths"]["sidecar"]["rate"]["load"]["latency"])
        base = LatencySummary(**results["paths"]["direct"]["rate"]["load"]["latency"])
        results["added"] = side.added_over(base).to_dict()
    except (KeyError, TypeError):
        results["added"] = None
    return results
