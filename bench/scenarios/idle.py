"""Scenario 5: the footprint of processes doing nothing, and where the sidecar's comes from.

Measured right after start-up, before any load: the sidecar connected to the
control plane with its AccessPolicy applied and its agent probed healthy
(and the same with mTLS on: enrolled, holding its key and certificate), the
control plane serving them, the backend, and Envoy for reference. RSS at
the end of a quiet window, and the CPU each spent over it (health probes,
timers, xDS). Then, in a fresh interpreter, the RSS after importing each
part of the sidecar in turn: how much of the idle footprint is code loaded
rather than state kept.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

from bench.footprint import Watch
from bench.loadgen import ROOT
from bench.scenarios.hop import HopRig

DEFAULT_WINDOW_S = 5.0
# In the order the sidecar's own imports would pull them in; each step adds to the previous ones.
IMPORT_STEPS = (
    ("grpc", "grpc"),
    ("protobuf + protovalidate", "google.protobuf.descriptor_pb2, protovalidate"),
    ("pydantic", "pydantic"),
    ("aiohttp", "aiohttp"),
    ("prometheus_client", "prometheus_client"),
    ("opentelemetry sdk", "opentelemetry.sdk.trace"),
    ("envoy xDS protos (sidecar.config.decode)", "sidecar.config.decode"),
    ("grpc reflection + health", "grpc_reflection.v1alpha.reflection, grpc_health.v1.health"),
    ("the rest of sidecar.app", "sidecar.app"),
)
_PROBE = """
import importlib, json, sys
def rss():
    return int(open('/proc/self/statm').read().split()[1]) * 4096 / 2**20
steps = json.loads(sys.argv[1])
found = [["python", rss()]]
for label, modules in steps:
    for name in modules.split(","):
        importlib.import_module(name.strip())
    found.append([label, rss()])
print(json.dumps(found))
"""


def import_footprint() -> list[dict[str, Any]]:
    """RSS (MB) after each import step in a fresh interpreter, and what each step added."""
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(IMPORT_STEPS)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    steps = json.loads(done.stdout)
    found, previous = [], 0.0
    for label, rss in steps:
        found.append({"step": label, "rss_mb": rss, "added_mb": rss - previous})
        previous = rss
    return found


def measure(rig: HopRig, *, window_s: float = DEFAULT_WINDOW_S) -> dict[str, Any]:
    pids = {
        "sidecar": rig.sidecar.pid,
        "control_plane": rig.mesh_cp.pid,
        "backend": rig.backend.pid,
        "floor": rig.floor.pid,
    }
    if rig.mtls_sidecar is not None:
        pids["sidecar_mtls"] = rig.mtls_sidecar.pid
    if rig.envoy is not None:
        pids["envoy"] = rig.envoy.pid
    with Watch(pids, interval=0.5) as watch:
        time.sleep(window_s)
    return {
        "window_s": window_s,
        "processes": {
            name: {"rss_mb": usage.rss_end_mb, "rss_peak_mb": usage.rss_peak_mb, "cpu_cores": usage.cores}
            for name, usage in watch.usage.items()
        },
        "sidecar_imports": import_footprint(),
    }
