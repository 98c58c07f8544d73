"""Scenario 1: latency and throughput a proxy hop adds to a unary gRPC call (~1 KiB each way).

Paths, all to the same backend (bench/backend.py), in one run:

- `direct`: client → backend;
- `sidecar`: client → AgentMesh sidecar inbound → backend, with contract
  validation both ways, metrics, tracing (spans at the default
  parentbased_always_on sampling, no exporter configured), the access log and
  an AccessPolicy from the control plane (default deny; Echo and Ticks
  allowed to any caller, since the benchmark's clients have no certificate).
  This is also the data path of a proxyless client: `xds:///echo` resolves
  to this same inbound listener;
- `envoy`: client → Envoy (one worker), a `gateway~` node of our control
  plane, routing authority `echo-raw` → backend, with the same AccessPolicy
  enforced by Envoy's RBAC filter;
- `envoy2`: client → Envoy A → Envoy B → backend, the Istio shape (a client
  side and a server side proxy). Envoy A is the gateway of a second control
  plane, where `echo-raw` is registered at Envoy B's gateway port.

Each path gets open-loop runs at fixed rates (h2load `--rps`) and one
closed-loop saturation run; CPU seconds and peak RSS of the path's proxies
are read over each run. Then, with the Python gRPC client on both sides of
the comparison, the real proxyless client (`xds:///echo`) against `envoy2`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import h2load
from bench.backend import ECHO_PATH, Messages
from bench.footprint import Usage, Watch
from bench.loadgen import PYTHON_XDS, LoadError, LoadResult, run_h2load, run_python_unary
from bench.profile import profile_process
from bench.settings import Settings
from bench.topology import (
    CLIENT_AGENT,
    SOURCE_HEADER,
    Backend,
    BenchControlPlane,
    Envoy,
    Sidecar,
    allow_bench_calls,
    policy_in_force,
    start_backend,
    start_bench_sidecar,
    start_envoy,
    start_registrar,
    unary_call,
    wait_until,
)
from tests.integration.procs import envoy_binary, free_port

log = logging.getLogger("bench.hop")

SIDECAR_AGENT = "echo"
RAW_AGENT = "echo-raw"
STREAMS_AGENT = "echo-streams"
TRACING_AGENT = "echo-tracing"
PATH_LABELS = {
    "direct": "client → backend",
    "sidecar": "client → sidecar → backend",
    "envoy": "client → Envoy → backend",
    "envoy2": "client → Envoy → Envoy → backend",
    "proxyless": "xds:/// client → sidecar → backend",
}


@dataclass(frozen=True)
class Target:
    """Where a path's client sends its calls, and which processes are its proxies."""

    name: str
    address: str
    authority: str | None
    proxies: Mapping[str, int]

    @property
    def url(self) -> str:
        return f"http://{self.address}{ECHO_PATH}"

    def headers(self) -> list[str]:
        headers = [*h2load.GRPC_HEADERS, f"{SOURCE_HEADER}: {CLIENT_AGENT}"]
        if self.authority:
            headers.append(f":authority: {self.authority}")
        return headers


@dataclass
class HopRig:
    """The running processes of scenario 1 (and of 3 and 5, which reuse them)."""

    work: Path
    backend: Backend
    mesh_cp: BenchControlPlane  # Envoy B's control plane; the sidecars' and the proxyless client's too
    edge_cp: BenchControlPlane  # Envoy A's
    sidecar: Sidecar
    envoy: Envoy | None = None
    envoy_front: Envoy | None = None
    idle: dict[str, float] = field(default_factory=dict)

    def targets(self) -> list[Target]:
        found = [
            Target("direct", self.backend.address, None, {}),
            Target("sidecar", self.sidecar.inbound, None, {"sidecar": self.sidecar.pid}),
        ]
        if self.envoy is not None:
            found.append(Target("envoy", f"127.0.0.1:{self.envoy.port}", RAW_AGENT, {"envoy": self.envoy.pid}))
        if self.envoy is not None and self.envoy_front is not None:
            found.append(
                Target(
                    "envoy2",
                    f"127.0.0.1:{self.envoy_front.port}",
                    RAW_AGENT,
                    {"envoy_a": self.envoy_front.pid, "envoy_b": self.envoy.pid},
                )
            )
        return found

    def proxyless_bootstrap(self) -> str:
        return json.dumps(
            {
                "xds_servers": [
                    {
                        "server_uri": self.mesh_cp.address,
                        "channel_creds": [{"type": "insecure"}],
                        "server_features": ["xds_v3"],
                    }
                ],
                "node": {"id": "proxyless~bench-client", "cluster": CLIENT_AGENT, "locality": {"zone": "bench"}},
            }
        )


@contextlib.contextmanager
def hop_rig(settings: Settings, stack: contextlib.ExitStack) -> Iterator[HopRig]:
    """Starts backend, two control planes, the sidecar, registrations and (if installed) two Envoys."""
    work = settings.work
    backend = start_backend(work)
    stack.callback(backend.process.stop)
    mesh_cp = BenchControlPlane(work, "control-plane-mesh", gateway_port=free_port())
    stack.callback(mesh_cp.stop)
    edge_cp = BenchControlPlane(work, "control-plane-edge", gateway_port=free_port())
    stack.callback(edge_cp.stop)
    mesh_cp.apply([allow_bench_calls(name) for name in (SIDECAR_AGENT, RAW_AGENT, STREAMS_AGENT, TRACING_AGENT)])
    sidecar = start_bench_sidecar(work, SIDECAR_AGENT, upstream=backend.address, control_plane=mesh_cp.address)
    stack.callback(sidecar.process.stop)
    request = echo_request(settings)
    # The AccessPolicy has reached the sidecar once a method it does not allow is refused.
    wait_until(lambda: policy_in_force(sidecar.inbound, request), "the sidecar enforcing the AccessPolicy from xDS")
    rig = HopRig(work, backend, mesh_cp, edge_cp, sidecar)
    binary = envoy_binary()
    if binary is not None:
        registrar = start_registrar(work, mesh_cp, {RAW_AGENT: backend.address}, "register-mesh")
        stack.callback(registrar.stop)
        rig.envoy = start_envoy(work, binary, "bench-b", mesh_cp)
        stack.callback(rig.envoy.process.stop)
        front = start_registrar(work, edge_cp, {RAW_AGENT: f"127.0.0.1:{rig.envoy.port}"}, "register-edge")
        stack.callback(front.stop)
        rig.envoy_front = start_envoy(work, binary, "bench-a", edge_cp)
        stack.callback(rig.envoy_front.process.stop)
    for target in rig.targets():
        wait_until(
            lambda t=target: unary_call(t.address, ECHO_PATH, request, authority=t.authority)[0] == "OK",  # type: ignore[misc]
            f"a call through {target.name}",
        )
    envoy_refuses = rig.envoy is None or policy_in_force(f"127.0.0.1:{rig.envoy.port}", request, authority=RAW_AGENT)
    if not envoy_refuses:
        log.warning("Envoy let a call the AccessPolicy does not allow through")
    yield rig


def echo_request(settings: Settings) -> bytes:
    messages = bench_messages()
    request: Any = messages.echo_request(
        id="bench-1", payload=b"p" * settings.payload_bytes, reply_bytes=settings.reply_bytes
    )
    return bytes(request.SerializeToString())


@functools.cache
def bench_messages() -> Messages:
    """bench.v1's message classes, compiled once per process."""
    return Messages()


def measured_run(rig: HopRig, target: Target, load: h2load.Load, body: bytes) -> dict[str, Any]:
    """One h2load run with the proxies' CPU and memory and the backend's count of calls it served."""
    before = rig.backend.counters()["echo"]
    watched = {**target.proxies, "backend": rig.backend.pid}
    with Watch(watched) as watch:
        result = run_h2load(target.url, load, body=h2load.grpc_frame(body), headers=target.headers(), work_dir=rig.work)
    served = rig.backend.counters()["echo"] - before
    return run_record(result, watch, served, list(target.proxies))


def run_record(result: LoadResult, watch: Watch, served: int, proxies: list[str]) -> dict[str, Any]:
    """A run as stored in the results: load, resources, and the served-calls cross-check."""
    usage: Mapping[str, Usage] = watch.usage
    # h2load counts HTTP 200 as success; a gRPC error is HTTP 200 too. Calls that never reached
    # the backend but were counted as successes are errors.
    unserved = max(0, result.ok - served)
    proxy_cpu = sum(usage[p].cpu_s for p in proxies if p in usage)
    return {
        "load": result.to_dict(),
        "served_by_backend": served,
        "unserved_successes": unserved,
        "usage": {name: u.to_dict() for name, u in usage.items()},
        "machine_busy_cores": watch.machine_cores,
        "proxy_cpu_s": proxy_cpu,
        "proxy_cpu_s_per_1k": proxy_cpu / served * 1000 if proxies and served else math.nan,
        "proxy_peak_rss_mb": {p: usage[p].rss_peak_mb for p in proxies if p in usage},
        "proxy_cores": sum(usage[p].cores for p in proxies if p in usage),
    }


def _warm(rig: HopRig, target: Target, body: bytes, settings: Settings) -> None:
    load = h2load.Load(duration_s=settings.warmup_s, clients=2, streams=8)
    run_h2load(target.url, load, body=h2load.grpc_frame(body), headers=target.headers(), work_dir=rig.work)


def run(settings: Settings, rig: HopRig) -> dict[str, Any]:
    """Every path at every rate, then saturation; returns the scenario's results."""
    body = echo_request(settings)
    results: dict[str, Any] = {
        "tool": "h2load" if h2load.binary() else "none",
        "request_bytes": len(body),
        "reply_bytes": settings.reply_bytes,
        "rates": list(settings.rates),
        "paths": {},
        "labels": PATH_LABELS,
        "envoy": rig.envoy is not None,
    }
    if h2load.binary() is None:
        return results | python_fallback(settings, rig, body)
    targets = rig.targets()
    paths: dict[str, Any] = {t.name: {"rates": {}} for t in targets}
    for target in targets:
        _warm(rig, target, body, settings)
    # Paths interleaved at each rate, so a burst of background load hits them alike.
    for rate in settings.rates:
        for target in targets:
            log.info("hop: %s at %s req/s", target.name, rate)
            load = h2load.open_loop(rate, settings.fixed_s)
            paths[target.name]["rates"][_key(rate)] = measured_run(rig, target, load, body)
    saturation = h2load.Load(
        duration_s=settings.saturation_s, clients=settings.saturation_clients, streams=settings.saturation_streams
    )
    for target in targets:
        log.info("hop: %s saturation", target.name)
        paths[target.name]["saturation"] = measured_run(rig, target, saturation, body)
    results["paths"] = paths
    if settings.python_client:
        results["proxyless"] = proxyless_comparison(settings, rig, body)
    if settings.profile:
        results["profile"] = profile_sidecar(settings, rig, body)
    return results


def python_fallback(settings: Settings, rig: HopRig, body: bytes) -> dict[str, Any]:
    """Without h2load: the same paths and rates from the Python generator, labelled as such."""
    paths: dict[str, Any] = {}
    for target in rig.targets():
        path: dict[str, Any] = {"rates": {}}
        for rate in (*settings.rates, None):
            before = rig.backend.counters()["echo"]
            with Watch({**target.proxies, "backend": rig.backend.pid}) as watch:
                result = run_python_unary(
                    target.address,
                    ECHO_PATH,
                    body=body,
                    rate=rate,
                    duration_s=settings.fixed_s if rate else settings.saturation_s,
                    authority=target.authority,
                    metadata={SOURCE_HEADER: CLIENT_AGENT},
                    work_dir=rig.work,
                )
            record = run_record(result, watch, rig.backend.counters()["echo"] - before, list(target.proxies))
            if rate is None:
                path["saturation"] = record
            else:
                path["rates"][_key(rate)] = record
        paths[target.name] = path
    return {"tool": "grpc.aio (Python; h2load absent)", "paths": paths}


def proxyless_comparison(settings: Settings, rig: HopRig, body: bytes) -> dict[str, Any]:
    """The Python gRPC client at each rate: direct, `xds:///echo` (proxyless), and Envoy → Envoy."""
    env_xds = {"GRPC_XDS_BOOTSTRAP_CONFIG": rig.proxyless_bootstrap()}
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("GRPC_XDS_BOOTSTRAP")}
    runs: list[tuple[str, str, str | None, dict[str, str], Mapping[str, int]]] = [
        ("direct", rig.backend.address, None, base_env, {}),
        ("proxyless", f"xds:///{SIDECAR_AGENT}", None, {**base_env, **env_xds}, {"sidecar": rig.sidecar.pid}),
    ]
    if rig.envoy is not None and rig.envoy_front is not None:
        runs.append(
            (
                "envoy2",
                f"127.0.0.1:{rig.envoy_front.port}",
                RAW_AGENT,
                base_env,
                {"envoy_a": rig.envoy_front.pid, "envoy_b": rig.envoy.pid},
            )
        )
    paths: dict[str, Any] = {name: {"rates": {}} for name, *_ in runs}
    for rate in settings.rates:
        for name, address, authority, env, proxies in runs:
            log.info("hop (Python client): %s at %s req/s", name, rate)
            before = rig.backend.counters()["echo"]
            try:
                with Watch({**proxies, "backend": rig.backend.pid}) as watch:
                    result = run_python_unary(
                        address,
                        ECHO_PATH,
                        body=body,
                        rate=rate,
                        duration_s=settings.fixed_s,
                        authority=authority,
                        metadata={SOURCE_HEADER: CLIENT_AGENT},
                        env=env,
                        tool=PYTHON_XDS if name == "proxyless" else "grpc.aio (Python)",
                        work_dir=rig.work,
                    )
            except LoadError as exc:
                paths[name]["rates"][_key(rate)] = {"error": str(exc)}
                continue
            served = rig.backend.counters()["echo"] - before
            paths[name]["rates"][_key(rate)] = run_record(result, watch, served, list(proxies))
    return {"tool": "grpc.aio (Python), same client for every path", "paths": paths}


def profile_sidecar(settings: Settings, rig: HopRig, body: bytes) -> dict[str, Any]:
    """A saturation run with py-spy sampling the sidecar (not one of the measured runs)."""
    target = next(t for t in rig.targets() if t.name == "sidecar")
    load = h2load.Load(
        duration_s=settings.profile_s, clients=settings.saturation_clients, streams=settings.saturation_streams
    )
    with profile_process(rig.sidecar.pid, settings.profile_s + 1, rig.work / "sidecar-profile") as profile:
        run_h2load(target.url, load, body=h2load.grpc_frame(body), headers=target.headers(), work_dir=rig.work)
    return profile.result()


def _key(rate: float) -> str:
    return str(int(rate)) if float(rate).is_integer() else str(rate)
