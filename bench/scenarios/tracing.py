"""Scenario 1c: what tracing costs the sidecar hop, by sampling.

The hop of scenario 1 (client → sidecar → backend, every feature on) once
per tracing setting, each on a fresh sidecar of its own (the SDK reads its
`OTEL_*` variables at start-up), in one run:

- `off`: `OTEL_SDK_DISABLED=true` (no-op tracer; no spans, no trace ids in
  logs or exemplars);
- `0%`, `10%`, `100%`: `OTEL_TRACES_SAMPLER=parentbased_traceidratio` with
  ratio 0, 0.1 and 1 (h2load sends no `traceparent`, so the ratio decides
  every call; 100 % is the default `parentbased_always_on`).

No exporter is configured, as in scenario 1: the numbers are the cost of
creating, sampling and ending spans and propagating their context, not of
shipping them. Each setting gets an open-loop run at the highest fixed rate
and a closed-loop (saturation) run, with the sidecar's CPU seconds per 1,000
calls.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from bench import h2load
from bench.loadgen import run_h2load
from bench.scenarios.hop import TRACING_AGENT, HopRig, Target, echo_request, measured_run
from bench.settings import Settings
from bench.topology import Sidecar, policy_in_force, start_bench_sidecar, wait_until

log = logging.getLogger("bench.tracing")

# Setting name -> the sidecar's environment; insertion order is the report's row order.
SETTINGS: Mapping[str, Mapping[str, str]] = {
    "off": {"OTEL_SDK_DISABLED": "true"},
    "0%": {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0"},
    "10%": {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"},
    "100%": {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "1"},
}
# Variables of the bench's own environment that would change what a setting means.
_OTEL_CLEARED = ("OTEL_SDK_DISABLED", "OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG", "OTEL_TRACES_EXPORTER")


def start_tracing_sidecar(settings: Settings, rig: HopRig, env: Mapping[str, str]) -> Sidecar:
    """A sidecar for the bench agent with `env` (plus no exporter), enforcing the AccessPolicy."""
    environment = {name: "" for name in _OTEL_CLEARED} | {"OTEL_TRACES_EXPORTER": "none"} | dict(env)
    sidecar = start_bench_sidecar(
        settings.work,
        TRACING_AGENT,
        upstream=rig.backend.address,
        control_plane=rig.mesh_cp.address,
        env=environment,
    )
    probe = echo_request(settings)
    wait_until(
        lambda: policy_in_force(sidecar.inbound, probe),
        "the tracing sidecar enforcing the AccessPolicy from xDS",
    )
    return sidecar


def run(settings: Settings, rig: HopRig) -> dict[str, Any]:
    """Every tracing setting: open loop at the highest fixed rate, then saturation."""
    if h2load.binary() is None:
        return {"error": "h2load is not installed (Debian package nghttp2-client)"}
    body = echo_request(settings)
    rate = max(settings.rates)
    results: dict[str, Any] = {"rate": rate, "exporter": "none", "settings": {}}
    for name, env in SETTINGS.items():
        log.info("tracing: %s", name)
        sidecar = start_tracing_sidecar(settings, rig, env)
        try:
            target = Target(name, sidecar.inbound, None, {"sidecar": sidecar.pid})
            warm = h2load.Load(duration_s=settings.warmup_s, clients=2, streams=8)
            run_h2load(target.url, warm, body=h2load.grpc_frame(body), headers=target.headers(), work_dir=rig.work)
            fixed = measured_run(rig, target, h2load.open_loop(rate, settings.fixed_s), body)
            saturation = measured_run(
                rig,
                target,
                h2load.Load(
                    duration_s=settings.saturation_s,
                    clients=settings.saturation_clients,
                    streams=settings.saturation_streams,
                ),
                body,
            )
            results["settings"][name] = {"env": dict(env), "fixed": fixed, "saturation": saturation}
        finally:
            sidecar.process.stop()
    return results
