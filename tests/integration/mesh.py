"""A tiny harness for real example agents and their sidecars on free ports."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import sys
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import yaml
from google.protobuf import descriptor_pb2, descriptor_pool, duration_pb2, message_factory
from google.protobuf.message import Message

from agentmesh.identity.client import IdentityClient
from agentmesh.identity.keys import generate_key
from agentmesh.identity.material import IdentityMaterial
from agentmesh.protoc import compile_descriptor_set
from agentmesh.v1 import control_pb2, control_pb2_grpc
from tests.integration.controlplane import TOKEN
from tests.integration.procs import AGENTMESH, EXAMPLES, Process, free_port, grpc_serving, http_ok, start, wait_for

JOIN_TOKEN_ENV = "AGENTMESH_JOIN_TOKEN"


@dataclass
class SidecarPorts:
    inbound: int = field(default_factory=free_port)
    egress_grpc: int = field(default_factory=free_port)
    egress_http: int = field(default_factory=free_port)
    admin: int = field(default_factory=free_port)

    @property
    def inbound_address(self) -> str:
        return f"127.0.0.1:{self.inbound}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin}"

    @property
    def egress_http_url(self) -> str:
        return f"http://127.0.0.1:{self.egress_http}"


CONTRACTS: dict[str, dict[str, Any]] = {
    "researcher": {"protos": [str(EXAMPLES / "researcher" / "researcher.proto")]},
    "writer": {"protos": [str(EXAMPLES / "writer" / "writer.proto")]},
    "planner": {"protos": [str(EXAMPLES / "planner" / "planner.proto")]},
    "summarizer": {"descriptor_set": str(EXAMPLES / "summarizer" / "summarizer.binpb")},
}


@dataclass
class AgentUnderTest:
    name: str
    agent_port: int
    ports: SidecarPorts
    config: Path
    agent: Process | None = None
    sidecar: Process | None = None

    def stop(self) -> None:
        for process in (self.sidecar, self.agent):
            if process is not None:
                process.stop()

    def restart_sidecar(self, tmp: Path, *, env: dict[str, str] | None = None, wait_ready: bool = True) -> Process:
        """Stops the sidecar (SIGTERM, drained) and starts it again from the same agent.yaml."""
        if self.sidecar is not None:
            assert self.sidecar.stop() == 0, self.sidecar.output()
        self.sidecar = start_sidecar(self.name, self.config, tmp, self.ports, wait_ready=wait_ready, env=env)
        return self.sidecar

    def identity(self) -> dict[str, Any]:
        """The sidecar's /identity: mtls, mode, spiffe_id, serial, not_after, generation (or why it has none)."""
        return admin_json(self.ports, "/identity")


def write_config(
    tmp: Path, name: str, *, agent_port: int, ports: SidecarPorts, version: str = "v1", **overrides: Any
) -> Path:
    config: dict[str, Any] = {
        "agent": {"name": name, "version": version, "team": "examples"},
        "upstream": {
            "url": f"http://127.0.0.1:{agent_port}",
            "protocol": "grpc" if name == "summarizer" else "http",
        },
        "contract": {**CONTRACTS[name]},
        "health": {"interval": "200ms", "timeout": "200ms", "unhealthy_threshold": 1},
        "listen": {
            "inbound": ports.inbound_address,
            "egress_grpc": f"127.0.0.1:{ports.egress_grpc}",
            "egress_http": f"127.0.0.1:{ports.egress_http}",
            "admin": f"127.0.0.1:{ports.admin}",
        },
        "limits": {"drain_timeout": "10s"},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    path = tmp / f"{name}-{version}-{ports.inbound}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def agent_argv(name: str, port: int, version: str = "v1") -> list[str]:
    argv = [sys.executable, str(EXAMPLES / name / "agent.py"), "--port", str(port)]
    if name == "researcher":
        argv += ["--version", version]
    return argv


def start_sidecar(
    name: str,
    config: Path,
    tmp: Path,
    ports: SidecarPorts,
    *,
    wait_ready: bool = True,
    env: dict[str, str] | None = None,
) -> Process:
    process = start(f"sidecar-{name}-{config.stem}", [*AGENTMESH, "sidecar", "--config", str(config)], tmp, env)
    wait_for(lambda: http_ok(f"{ports.admin_url}/healthz"), what=f"{name} sidecar admin", process=process)
    if wait_ready:
        wait_for(lambda: http_ok(f"{ports.admin_url}/readyz"), what=f"{name} sidecar ready", process=process)
    return process


@contextlib.contextmanager
def agent_with_sidecar(
    tmp: Path,
    name: str,
    *,
    version: str = "v1",
    start_agent: bool = True,
    sidecar_env: dict[str, str] | None = None,
    join_token: str | None = None,
    wait_ready: bool | None = None,
    **overrides: Any,
) -> Iterator[AgentUnderTest]:
    """An example agent and its sidecar on free ports; with `join_token`, the sidecar enrolls and runs mTLS.

    The token reaches the sidecar in its environment (AGENTMESH_JOIN_TOKEN); its identity is kept in
    `<tmp>/<name>-<version>-<inbound port>.identity` unless `identity={"dir": ...}` says otherwise. Pass
    `control_plane={"address": ...}` too: mTLS needs the control plane link. `wait_ready` (default: when the
    agent is started) waits for the sidecar's /readyz.
    """
    ports = SidecarPorts()
    agent_port = free_port()
    if join_token is not None:
        sidecar_env = {**(sidecar_env or {}), JOIN_TOKEN_ENV: join_token}
        identity = {"dir": str(tmp / f"{name}-{version}-{ports.inbound}.identity"), **overrides.get("identity", {})}
        overrides = {**overrides, "identity": identity}
    config = write_config(tmp, name, agent_port=agent_port, ports=ports, version=version, **overrides)
    under_test = AgentUnderTest(name, agent_port, ports, config)
    try:
        if start_agent:
            under_test.agent = start(
                f"agent-{name}-{version}",
                agent_argv(name, agent_port, version),
                tmp,
                env={"AGENTMESH_EGRESS_HTTP": ports.egress_http_url},
            )
            if name == "summarizer":
                wait_for(
                    lambda: grpc_serving(f"127.0.0.1:{agent_port}"), what="summarizer agent", process=under_test.agent
                )
            else:
                wait_for(
                    lambda: http_ok(f"http://127.0.0.1:{agent_port}/healthz"),
                    what=f"{name} agent",
                    process=under_test.agent,
                )
        ready = start_agent if wait_ready is None else wait_ready
        under_test.sidecar = start_sidecar(name, config, tmp, ports, wait_ready=ready, env=sidecar_env)
        yield under_test
    finally:
        under_test.stop()


def mtls_agent(
    tmp: Path, control_plane: str, name: str, *, team: str = "examples", **overrides: Any
) -> contextlib.AbstractContextManager[AgentUnderTest]:
    """`agent_with_sidecar` linked to the control plane at `control_plane`, enrolling with a fresh join token."""
    token = create_join_token(control_plane, name, team=team)
    return agent_with_sidecar(tmp, name, join_token=token, control_plane={"address": control_plane}, **overrides)


class Messages:
    """Message classes of the example contracts, built from their .proto files."""

    def __init__(self) -> None:
        fds = descriptor_pb2.FileDescriptorSet()
        for name in ("researcher", "writer", "planner"):
            fds.file.extend(compile_descriptor_set([EXAMPLES / name / f"{name}.proto"]).file)
        fds.file.extend(
            descriptor_pb2.FileDescriptorSet.FromString(
                (EXAMPLES / "summarizer" / "summarizer.binpb").read_bytes()
            ).file
        )
        self.pool = descriptor_pool.DescriptorPool()
        seen: set[str] = set()
        for file in fds.file:
            if file.name not in seen:
                seen.add(file.name)
                self.pool.Add(file)

    def __call__(self, full_name: str, **fields: Any) -> Message:
        cls = message_factory.GetMessageClass(self.pool.FindMessageTypeByName(full_name))
        return cls(**fields)

    def cls(self, full_name: str) -> type[Message]:
        return message_factory.GetMessageClass(self.pool.FindMessageTypeByName(full_name))


def admin_json(ports: SidecarPorts, path: str) -> dict[str, Any]:
    """GET a JSON document from a sidecar's admin endpoint."""
    with urllib.request.urlopen(f"{ports.admin_url}{path}", timeout=5) as response:
        document: dict[str, Any] = json.loads(response.read())
    return document


def create_join_token(
    control_plane: str,
    agent: str,
    *,
    team: str = "examples",
    ttl: datetime.timedelta = datetime.timedelta(minutes=10),
    max_uses: int = 1,
    admin_token: str = TOKEN,
) -> str:
    """A join token for `agent` of `team`, minted through the admin API of the control plane at `control_plane`."""
    duration = duration_pb2.Duration()
    duration.FromTimedelta(ttl)
    request = control_pb2.CreateJoinTokenRequest(
        agent=agent, team=team, ttl=duration, max_uses=max_uses, description="integration test"
    )
    with grpc.insecure_channel(control_plane) as channel:
        token = control_pb2_grpc.ControlPlaneStub(channel).CreateJoinToken(
            request, metadata=(("authorization", f"Bearer {admin_token}"),), timeout=10
        )
    return str(token.secret)


async def _enroll(control_plane: str, token: str) -> IdentityMaterial:
    async with grpc.aio.insecure_channel(control_plane) as channel:
        return await IdentityClient(channel).enroll(token, generate_key())


def enroll(control_plane: str, token: str) -> IdentityMaterial:
    """Enrolls with `token` through the Identity service, as a sidecar would; the key is made here."""
    return asyncio.run(_enroll(control_plane, token))


def status_of(call: Callable[[], object]) -> grpc.StatusCode:
    """How a call ended: OK, or the code of the RpcError it raised."""
    try:
        call()
    except grpc.RpcError as error:
        code: grpc.StatusCode = error.code()
        return code
    return grpc.StatusCode.OK


def unary(channel: grpc.Channel, path: str, request: Message, response_cls: type[Message], **kwargs: Any) -> Message:
    call = channel.unary_unary(
        path, request_serializer=lambda m: m.SerializeToString(), response_deserializer=response_cls.FromString
    )
    return call(request, **kwargs)


def raw_unary(channel: grpc.Channel, path: str, data: bytes, **kwargs: Any) -> bytes:
    call = channel.unary_unary(path, request_serializer=None, response_deserializer=None)
    return call(data, **kwargs)


__all__ = [
    "AgentUnderTest",
    "Messages",
    "SidecarPorts",
    "admin_json",
    "agent_with_sidecar",
    "create_join_token",
    "enroll",
    "grpc_serving",
    "mtls_agent",
    "raw_unary",
    "status_of",
    "unary",
]
