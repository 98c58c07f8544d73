"""Scenario 4: one control plane, thousands of ADS streams, one policy change.

A fresh `agentmesh control-plane` with a few registered agents (so the
snapshot has listeners, routes, clusters and endpoints like a small mesh) is
joined by simulated sidecars (bench/ads_swarm.py, spread over a few
processes) in steps up to each client count. At each step, once every
client has ACKed all four types: the control plane's RSS, then one
TrafficPolicy change (a route timeout: new RouteConfigurations for every
client) and the time from the admin API call until each client ACKed the
new version (p50, p99, max), with the control plane's CPU over the push.

Clients join at CONNECT_RATE streams per second in all: at 1,000 per second
on this 2-core machine some streams fail (CANCELLED, "Internal error from
Core") before they sync, so the steady-state measurement uses a gentler
ramp; a reconnect storm after a control-plane restart would hit that limit.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import select
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench.footprint import Watch, mib, rss_bytes
from bench.latency import LatencySummary
from bench.loadgen import ROOT
from bench.settings import Settings
from bench.topology import BenchControlPlane, start_registrar
from tests.integration.procs import free_port

log = logging.getLogger("bench.control_plane")

AGENT_PREFIX = "agent"
SYNC_TIMEOUT_PER_1K_S = 30.0
PUSH_TIMEOUT_S = 180.0
ANSWER_TIMEOUT_S = 60.0
# After the last client ACKs a new version, later types of the same change may still arrive.
SETTLE_S = 1.0
# New ADS streams per second, all swarm processes together.
CONNECT_RATE = 300.0


@dataclass
class Swarm:
    process: subprocess.Popen[str]
    clients: int

    def ask(self, command: str, timeout: float = ANSWER_TIMEOUT_S) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError(f"ads_swarm did not answer {command!r} in {timeout:.0f}s")
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"ads_swarm exited ({self.process.poll()})")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(TimeoutError, RuntimeError, OSError, ValueError):
                self.ask("quit", timeout=1)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def start_swarm(target: str, clients: int, prefix: str, connect_rate: float) -> Swarm:
    argv = [sys.executable, "-m", "bench.ads_swarm", "--target", target, "--clients", str(clients)]
    argv += ["--prefix", prefix, "--connect-rate", str(connect_rate)]
    process = subprocess.Popen(
        argv, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    return Swarm(process, clients)


def timeout_policy(seconds: int) -> dict[str, Any]:
    return {
        "kind": "TrafficPolicy",
        "metadata": {"name": f"{AGENT_PREFIX}-0-timeout"},
        "spec": {"target": f"{AGENT_PREFIX}-0", "timeout": f"{seconds}s"},
    }


def _wait(check: Callable[[], bool], timeout: float, what: str) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    log.warning("timed out waiting for %s", what)
    return False


def _status(swarms: list[Swarm]) -> dict[str, Any]:
    total: dict[str, Any] = {"clients": 0, "connected": 0, "synced": 0, "failed": 0, "errors": {}}
    for swarm in swarms:
        for key, value in swarm.ask("status").items():
            if key == "errors":
                for error, count in value.items():
                    total["errors"][error] = total["errors"].get(error, 0) + count
            else:
                total[key] += value
    return total


def run(settings: Settings) -> dict[str, Any]:
    work = settings.work
    control_plane = BenchControlPlane(work, "control-plane-scale", gateway_port=free_port())
    swarms: list[Swarm] = []
    registrar = None
    steps: list[dict[str, Any]] = []
    results: dict[str, Any] = {"agents": settings.ads_agents, "processes": settings.ads_processes, "steps": steps}
    try:
        results["idle_rss_mb"] = mib(rss_bytes(control_plane.pid))
        fake = {f"{AGENT_PREFIX}-{i}": f"127.0.0.1:{free_port()}" for i in range(settings.ads_agents)}
        registrar = start_registrar(work, control_plane, fake, "register-scale")
        control_plane.apply([timeout_policy(10)])
        time.sleep(1.0)  # the registrations' snapshot is published
        connected = 0
        for step, target_clients in enumerate(settings.ads_clients):
            more = target_clients - connected
            if more <= 0:
                continue
            per_process = math.ceil(more / settings.ads_processes)
            started = time.monotonic()
            with Watch({"control_plane": control_plane.pid}) as connect_watch:
                for index in range(settings.ads_processes):
                    count = min(per_process, more - index * per_process)
                    if count > 0:
                        rate = CONNECT_RATE / settings.ads_processes
                        swarms.append(start_swarm(control_plane.address, count, f"swarm{step}x{index}", rate))
                synced = _wait(
                    lambda goal=target_clients: _status(swarms)["synced"] >= goal,  # type: ignore[misc]
                    SYNC_TIMEOUT_PER_1K_S * target_clients / 1000,
                    f"{target_clients} clients synced",
                )
            connect_s = time.monotonic() - started
            status = _status(swarms)
            connected = target_clients
            step_result: dict[str, Any] = {
                "clients": target_clients,
                "synced": status["synced"],
                "failed": status["failed"],
                "connect_s": connect_s,
                "connect_cpu_s": connect_watch.usage["control_plane"].cpu_s,
                "rss_connected_mb": mib(rss_bytes(control_plane.pid)),
            }
            if not synced:
                steps.append(step_result | {"error": "not every client synced"})
                break
            time.sleep(1.0)
            for swarm in swarms:
                swarm.ask("mark")
            swarm_pids = {f"swarm{i}": s.process.pid for i, s in enumerate(swarms)}
            with Watch({"control_plane": control_plane.pid, **swarm_pids}) as push_watch:
                t0 = time.monotonic()
                control_plane.apply([timeout_policy(11 + step)], message=f"bench step {step}")

                def all_acked() -> bool:
                    acked = [t for s in swarms for t in s.ask("report")["acked"]]
                    return all(t is not None for t in acked)

                done = _wait(all_acked, PUSH_TIMEOUT_S, "every client to ACK the change")
                if done:
                    time.sleep(SETTLE_S)
            acked = [t for s in swarms for t in s.ask("report")["acked"]]
            latencies_us = [(t - t0) * 1e6 for t in acked if t is not None]
            summary = LatencySummary.from_micros(latencies_us)
            usage = push_watch.usage
            step_result |= {
                "acked": len(latencies_us),
                "missing": len(acked) - len(latencies_us),
                "ack_latency": summary.to_dict(),
                "push_cpu_s": usage["control_plane"].cpu_s if "control_plane" in usage else math.nan,
                "push_wall_s": usage["control_plane"].wall_s if "control_plane" in usage else math.nan,
                "swarm_cpu_s": sum(u.cpu_s for name, u in usage.items() if name.startswith("swarm")),
                "rss_peak_mb": usage["control_plane"].rss_peak_mb if "control_plane" in usage else math.nan,
                "machine_busy_cores": push_watch.machine_cores,
            }
            steps.append(step_result)
            log.info("control plane: %s", step_result)
    finally:
        for swarm in swarms:
            swarm.stop()
        if registrar is not None:
            registrar.stop()
        control_plane.stop()
    return results
