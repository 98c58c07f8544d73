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
- `floor`: client → a grpc.aio proxy with no features → backend
  (bench/floor.py): what the sidecar's runtime costs before any feature, so
  that a gap to a target splits into the features' share and the runtime's;
- `envoy`: client → Envoy (one worker), a `gateway~` node of our control
  plane, routing authority `echo-raw` → backend, with the same AccessPolicy
  enforced by Envoy's RBAC filter;
- `envoy2`: client → Envoy A → Envoy B → backend, the Istio shape (a client
  side and a server side proxy). Envoy A is the gateway of a second control
  plane, where `echo-raw` is registered at Envoy B's gateway port;
- `sidecar-mtls`: the `sidecar` path with workload identity on both ends.
  The sidecar enrolled with its own join token and accepts strict mutual
  TLS only; the client presents a workload certificate from the control
  plane (`bench-client` of team `bench`, enrolled with a join token as
  `agentmesh up` enrolls the CLI), and the AccessPolicy allows that SPIFFE
  ID, which the sidecar's RBAC reads from the certificate.

Each plaintext path gets open-loop runs at fixed rates (h2load `--rps`) and
one closed-loop saturation run; CPU seconds and peak RSS of the path's
proxies are read over each run. h2load cannot present a TLS client
certificate, so the mTLS path is driven by the Python gRPC client
(bench/grpc_client.py), and so are the paths it is compared with (`direct`,
`sidecar`, `envoy`): one interleaved set of runs, same generator, same
rates, then saturation. In the same set, the real proxyless client
(`xds:///echo`) against `envoy2`; the `direct` runs at fixed rates serve
both comparisons.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import h2load
from bench.backend import ECHO_PATH, Messages
from bench.footprint import Usage, Watch
from bench.loadgen import (
    PYTHON_GRPC,
    PYTHON_MTLS,
    PYTHON_XDS,
    ClientCertificate,
    LoadError,
    LoadResult,
    run_h2load,
    run_python_unary,
)
from bench.profile import profile_process
from bench.settings import Settings
from bench.topology import (
    CLIENT_AGENT,
    SOURCE_HEADER,
    Backend,
    BenchControlPlane,
    Envoy,
    Floor,
    Sidecar,
    allow_bench_calls,
    bench_identity,
    enroll_client,
    policy_in_force,
    start_backend,
    start_bench_sidecar,
    start_envoy,
    start_floor,
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
MTLS_AGENT = "echo-mtls"
MTLS_PATH = "sidecar-mtls"
PATH_LABELS = {
    "direct": "client → backend",
    "sidecar": "client → sidecar → backend",
    "floor": "client → bare grpc.aio proxy (no features) → backend",
    "envoy": "client → Envoy → backend",
    "envoy2": "client → Envoy → Envoy → backend",
    "proxyless": "xds:/// client → sidecar → backend",
    MTLS_PATH: "client with a workload certificate → sidecar (mTLS, strict) → backend",
}
PYTHON_CLIENT = "grpc.aio (Python)"
# The paths measured with the Python generator beside the mTLS path, in the order they are interleaved.
MTLS_COMPARED = ("direct", "sidecar", MTLS_PATH, "envoy")
PROXYLESS_COMPARED = ("direct", "proxyless", "envoy2")


@dataclass(frozen=True)
class Target:
    """Where a path's client sends its calls, and which processes are its proxies."""

    name: str
    address: str
    authority: str | None
    proxies: Mapping[str, int]
    # The client's workload identity, when the path needs mutual TLS (the Python generator only).
    certificate: ClientCertificate | None = None

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
    floor: Floor
    envoy: Envoy | None = None
    envoy_front: Envoy | None = None
    identity_cp: BenchControlPlane | None = None  # the mTLS sidecar's control plane and CA (see start_mtls)
    mtls_sidecar: Sidecar | None = None
    client_certificate: ClientCertificate | None = None
    mtls_error: str | None = None  # why there is no mTLS path, when starting it failed
    idle: dict[str, float] = field(default_factory=dict)

    def mtls_target(self) -> Target | None:
        """The mTLS path, when its sidecar and the client's identity are there."""
        if self.mtls_sidecar is None or self.client_certificate is None:
            return None
        proxies = {"sidecar": self.mtls_sidecar.pid}
        return Target(MTLS_PATH, self.mtls_sidecar.inbound, None, proxies, self.client_certificate)

    def targets(self) -> list[Target]:
        """The plaintext paths (h2load can drive these)."""
        found = [
            Target("direct", self.backend.address, None, {}),
            Target("sidecar", self.sidecar.inbound, None, {"sidecar": self.sidecar.pid}),
            Target("floor", self.floor.address, None, {"floor": self.floor.pid}),
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
    """Starts backend, control planes, the sidecars (plaintext, mTLS), registrations and (if installed) two Envoys."""
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
    floor = start_floor(work, backend.address)
    stack.callback(floor.process.stop)
    rig = HopRig(work, backend, mesh_cp, edge_cp, sidecar, floor)
    start_mtls(rig, stack, request)
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


def start_mtls(rig: HopRig, stack: contextlib.ExitStack, request: bytes) -> None:
    """The mTLS sidecar, its control plane and the client's certificate.

    The control plane is one of its own: an Envoy gateway is given a
    certificate-needing cluster for every mTLS agent, and the bench's Envoys
    have no SDS server, so in their control plane's mesh the mTLS agent would
    stall their start (15 s initial-fetch timeout) and change their config.
    A failure is kept in `rig.mtls_error`; the other paths still run.
    """
    try:
        control_plane = BenchControlPlane(rig.work, "control-plane-identity", gateway_port=free_port())
        stack.callback(control_plane.stop)
        rig.identity_cp = control_plane
        control_plane.apply([allow_bench_calls(MTLS_AGENT, callers=(CLIENT_AGENT,))])
        sidecar = start_bench_sidecar(
            rig.work,
            MTLS_AGENT,
            upstream=rig.backend.address,
            control_plane=control_plane.address,
            join_token=control_plane.join_token(MTLS_AGENT),
        )
        stack.callback(sidecar.process.stop)
        certificate = enroll_client(control_plane, rig.work / f"{CLIENT_AGENT}.identity", bench_identity(MTLS_AGENT))
        # An mTLS sidecar answers UNAVAILABLE until its first xDS config, then refuses what the policy does not allow.
        wait_until(
            lambda: policy_in_force(sidecar.inbound, request, certificate=certificate),
            "the mTLS sidecar enforcing the AccessPolicy from xDS",
        )
    except Exception as exc:
        log.exception("cannot start the mTLS path; the other paths still run")
        rig.mtls_error = f"start-up: {type(exc).__name__}: {str(exc)[:500]}"
        return
    rig.mtls_sidecar, rig.client_certificate = sidecar, certificate


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
        results |= python_comparisons(settings, rig, body)
    if settings.profile:
        results["profile"] = profile_sidecar(settings, rig, body)
    return results


def python_run(
    rig: HopRig,
    target: Target,
    *,
    body: bytes,
    rate: float | None,
    duration_s: float,
    env: Mapping[str, str] | None = None,
    tool: str = PYTHON_CLIENT,
    concurrency: int = 32,
) -> dict[str, Any]:
    """One run of the Python generator (open loop at `rate`, or closed loop), as stored in the results."""
    before = rig.backend.counters()["echo"]
    with Watch({**target.proxies, "backend": rig.backend.pid}) as watch:
        result = run_python_unary(
            target.address,
            ECHO_PATH,
            body=body,
            rate=rate,
            duration_s=duration_s,
            concurrency=concurrency,
            authority=target.authority,
            metadata={SOURCE_HEADER: CLIENT_AGENT},
            env=env,
            certificate=target.certificate,
            tool=PYTHON_MTLS if target.certificate is not None else tool,
            work_dir=rig.work,
        )
    return run_record(result, watch, rig.backend.counters()["echo"] - before, list(target.proxies))


def python_fallback(settings: Settings, rig: HopRig, body: bytes) -> dict[str, Any]:
    """Without h2load: the same paths and rates from the Python generator, labelled as such (mTLS path included)."""
    targets = rig.targets()
    mtls = rig.mtls_target()
    if mtls is not None:
        targets.append(mtls)
    paths: dict[str, Any] = {}
    for target in targets:
        path: dict[str, Any] = {"rates": {}}
        for rate in (*settings.rates, None):
            duration = settings.fixed_s if rate else settings.saturation_s
            record = python_run(rig, target, body=body, rate=rate, duration_s=duration, tool=PYTHON_GRPC)
            if rate is None:
                path["saturation"] = record
            else:
                path["rates"][_key(rate)] = record
        paths[target.name] = path
    found: dict[str, Any] = {"tool": "grpc.aio (Python; h2load absent)", "paths": paths}
    if rig.mtls_error:
        found["mtls"] = {"error": rig.mtls_error}
    return found


def python_targets(rig: HopRig) -> dict[str, tuple[Target, Mapping[str, str]]]:
    """The paths the Python generator drives, with each one's environment: name -> (target, env)."""
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("GRPC_XDS_BOOTSTRAP")}
    xds_env = {**base_env, "GRPC_XDS_BOOTSTRAP_CONFIG": rig.proxyless_bootstrap()}
    found: dict[str, tuple[Target, Mapping[str, str]]] = {t.name: (t, base_env) for t in rig.targets()}
    mtls = rig.mtls_target()
    if mtls is not None:
        found[mtls.name] = (mtls, base_env)
    proxyless = Target("proxyless", f"xds:///{SIDECAR_AGENT}", None, {"sidecar": rig.sidecar.pid})
    found["proxyless"] = (proxyless, xds_env)
    return found


def comparison_plan(available: Iterable[str], *, mtls: bool) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Which paths the Python generator runs at each fixed rate (interleaved, in order) and at saturation.

    The proxyless comparison always; the mTLS comparison (direct, sidecar,
    sidecar-mtls, envoy, each also at saturation) when the mTLS path is up.
    A path both comparisons need is run once per rate.
    """
    present = set(available)
    wanted = [*PROXYLESS_COMPARED]
    saturated: list[str] = []
    if mtls and MTLS_PATH in present:
        wanted = [*MTLS_COMPARED, *(name for name in PROXYLESS_COMPARED if name not in MTLS_COMPARED)]
        saturated = [name for name in MTLS_COMPARED if name in present]
    return tuple(name for name in wanted if name in present), tuple(saturated)


def python_comparisons(settings: Settings, rig: HopRig, body: bytes) -> dict[str, Any]:
    """The Python generator's runs: `proxyless` (vs two Envoys) and `mtls` (vs the plaintext paths).

    One set, interleaved at each rate so background load hits the paths
    alike, then saturation for the paths compared with the mTLS one.
    """
    runnable = python_targets(rig)
    fixed, saturated = comparison_plan(runnable, mtls=rig.mtls_target() is not None)
    records: dict[str, dict[str, Any]] = {name: {"rates": {}} for name in fixed}
    if MTLS_PATH in runnable:
        # Unlike the plaintext sidecar, the mTLS one has served nothing yet; first calls pay for lazy work.
        target, env = runnable[MTLS_PATH]
        with contextlib.suppress(LoadError):
            python_run(rig, target, body=body, rate=None, duration_s=settings.warmup_s, env=env, concurrency=8)
    for rate in settings.rates:
        for name in fixed:
            log.info("hop (Python client): %s at %s req/s", name, rate)
            records[name]["rates"][_key(rate)] = _python_record(settings, rig, runnable[name], body, rate)
    for name in saturated:
        log.info("hop (Python client): %s saturation", name)
        records[name]["saturation"] = _python_record(settings, rig, runnable[name], body, None)
    same_client = f"{PYTHON_CLIENT}, same client for every path"
    found: dict[str, Any] = {
        "proxyless": {
            "tool": same_client,
            "paths": {name: _fixed_only(records[name]) for name in PROXYLESS_COMPARED if name in records},
        }
    }
    if MTLS_PATH in records:
        found["mtls"] = {
            "tool": same_client,
            "identities": {"client": bench_identity(CLIENT_AGENT).uri, "sidecar": bench_identity(MTLS_AGENT).uri},
            "paths": {name: records[name] for name in MTLS_COMPARED if name in records},
        }
    else:
        found["mtls"] = {"error": rig.mtls_error or "the mTLS path did not start"}
    return found


def _python_record(
    settings: Settings, rig: HopRig, runnable: tuple[Target, Mapping[str, str]], body: bytes, rate: float | None
) -> dict[str, Any]:
    target, env = runnable
    tool = PYTHON_XDS if target.name == "proxyless" else PYTHON_CLIENT
    try:
        return python_run(rig, target, body=body, rate=rate, duration_s=settings.python_s, env=env, tool=tool)
    except LoadError as exc:
        return {"error": str(exc)}


def _fixed_only(path: Mapping[str, Any]) -> dict[str, Any]:
    return {"rates": path["rates"]}


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
