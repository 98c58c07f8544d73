"""A tiny harness for real example agents and their sidecars on free ports."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import yaml
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message

from agentmesh.protoc import compile_descriptor_set
from tests.integration.procs import AGENTMESH, EXAMPLES, Process, free_port, grpc_serving, http_ok, start, wait_for


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
    **overrides: Any,
) -> Iterator[AgentUnderTest]:
    ports = SidecarPorts()
    agent_port = free_port()
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
        under_test.sidecar = start_sidecar(name, config, tmp, ports, wait_ready=start_agent, env=sidecar_env)
        yield under_test
    finally:
        under_test.stop()


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


def unary(channel: grpc.Channel, path: str, request: Message, response_cls: type[Message], **kwargs: Any) -> Message:
    call = channel.unary_unary(
        path, request_serializer=lambda m: m.SerializeToString(), response_deserializer=response_cls.FromString
    )
    return call(request, **kwargs)


def raw_unary(channel: grpc.Channel, path: str, data: bytes, **kwargs: Any) -> bytes:
    call = channel.unary_unary(path, request_serializer=None, response_deserializer=None)
    return call(data, **kwargs)


__all__ = ["AgentUnderTest", "Messages", "SidecarPorts", "agent_with_sidecar", "grpc_serving", "raw_unary", "unary"]
