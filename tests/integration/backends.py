"""A controllable gRPC backend behind a real sidecar, for tests that need an upstream to misbehave on cue.

The backend is an untouched gRPC agent serving `meshtest.v1.Probe`
(probe.proto beside this file): every reply names the instance and version
that produced it and how many calls of that method the instance has seen.
Tests steer one instance at a time through a second service on the same
port, `meshtest.v1.ProbeControl` (JSON bytes, not part of the contract, so
only a test calling the agent directly reaches it):

    Set    {"fail_next": 2}        the next 2 calls fail (then it answers again)
           {"fail_always": true}   every call fails
           {"code": "UNAVAILABLE"} the status failures carry (default UNAVAILABLE)
           {"delay_ms": 800}       each call waits this long first (stops early when cancelled)
           {"reset": true}         forget the calls seen so far
    Stats  {"instance", "version", "calls": {method: count}, "failed", "cancelled"}

A call is counted the moment it arrives, before it fails or waits, so the
counts are the attempts the mesh made. `Set` replaces the whole behaviour.

Run one with `python -m tests.integration.backends --port P --instance a --version v1`;
`probe_with_sidecar` starts it with a sidecar registered with a control plane.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import grpc
import yaml
from google.protobuf import descriptor_pool, message, message_factory
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from agentmesh.protoc import compile_descriptor_set
from tests.integration.mesh import SidecarPorts, start_sidecar
from tests.integration.procs import Process, free_port, grpc_serving, start, wait_for

PROTO = Path(__file__).resolve().with_name("probe.proto")
SERVICE = "meshtest.v1.Probe"
CONTROL_SERVICE = "meshtest.v1.ProbeControl"
ECHO = f"/{SERVICE}/Echo"
WRITE = f"/{SERVICE}/Write"
WATCH = f"/{SERVICE}/Watch"
# How often a waiting call checks whether its caller is still there.
_POLL = 0.01

log = logging.getLogger("probe")


@dataclass(frozen=True)
class ProbeMessages:
    """The request and reply classes of probe.proto."""

    request: type[message.Message]
    reply: type[message.Message]


@functools.cache
def probe_messages() -> ProbeMessages:
    pool = descriptor_pool.DescriptorPool()
    for file in compile_descriptor_set([PROTO]).file:
        pool.Add(file)
    return ProbeMessages(
        request=message_factory.GetMessageClass(pool.FindMessageTypeByName("meshtest.v1.ProbeRequest")),
        reply=message_factory.GetMessageClass(pool.FindMessageTypeByName("meshtest.v1.ProbeReply")),
    )


# --- the backend process -----------------------------------------------------------------------


@dataclass
class Behaviour:
    """What the instance does with the next calls; set whole by ProbeControl/Set."""

    fail_next: int = 0
    fail_always: bool = False
    code: str = "UNAVAILABLE"
    delay_ms: int = 0

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Behaviour:
        behaviour = cls(
            fail_next=int(data.get("fail_next", 0)),
            fail_always=bool(data.get("fail_always", False)),
            code=str(data.get("code", "UNAVAILABLE")).upper(),
            delay_ms=int(data.get("delay_ms", 0)),
        )
        if behaviour.code not in grpc.StatusCode.__members__:
            raise ValueError(f"unknown status code {behaviour.code!r}")
        return behaviour


class ProbeServer:
    """The Probe skills and the control service of one instance (thread-safe: a thread per call)."""

    def __init__(self, *, instance: str, version: str) -> None:
        self.instance = instance
        self.version = version
        self.messages = probe_messages()
        self._lock = threading.Lock()
        self._behaviour = Behaviour()
        self._calls: Counter[str] = Counter()
        self._failed = 0
        self._cancelled = 0

    def _admit(self, method: str, context: grpc.ServicerContext) -> int:
        """Counts the call, then fails or waits as the behaviour says; returns the count seen."""
        with self._lock:
            self._calls[method] += 1
            seen = self._calls[method]
            behaviour = self._behaviour
            fail = behaviour.fail_always or behaviour.fail_next > 0
            if behaviour.fail_next > 0:
                behaviour.fail_next -= 1
            if fail:
                self._failed += 1
        if fail:
            context.abort(grpc.StatusCode[behaviour.code], f"{self.instance}: failing on purpose (call {seen})")
        self._wait(behaviour.delay_ms / 1000, context)
        return seen

    def _wait(self, seconds: float, context: grpc.ServicerContext) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if not context.is_active():
                with self._lock:
                    self._cancelled += 1
                context.abort(grpc.StatusCode.CANCELLED, "the caller went away")
            time.sleep(_POLL)

    def _reply(self, seen: int, index: int = 0) -> message.Message:
        return self.messages.reply(instance=self.instance, version=self.version, seen=seen, index=index)

    def unary(self, method: str, request: Any, context: grpc.ServicerContext) -> message.Message:
        return self._reply(self._admit(method, context))

    def watch(self, request: Any, context: grpc.ServicerContext) -> Iterator[message.Message]:
        seen = self._admit("Watch", context)
        for index in range(max(request.count, 1)):
            if index:
                self._wait(request.interval_ms / 1000, context)
            yield self._reply(seen, index)

    def set(self, data: bytes, context: grpc.ServicerContext) -> bytes:
        try:
            request = json.loads(data or b"{}")
            behaviour = Behaviour.from_json(request)
        except (ValueError, TypeError) as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"bad behaviour: {exc}")
        with self._lock:
            self._behaviour = behaviour
            if request.get("reset"):
                self._calls.clear()
                self._failed = self._cancelled = 0
        log.info("behaviour of %s: %s", self.instance, behaviour)
        return self.stats(b"", context)

    def stats(self, data: bytes, context: grpc.ServicerContext) -> bytes:
        with self._lock:
            return json.dumps(
                {
                    "instance": self.instance,
                    "version": self.version,
                    "calls": dict(self._calls),
                    "failed": self._failed,
                    "cancelled": self._cancelled,
                }
            ).encode()

    def handlers(self) -> tuple[grpc.GenericRpcHandler, ...]:
        request, reply = self.messages.request.FromString, self.messages.reply.SerializeToString
        probe = grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Echo": grpc.unary_unary_rpc_method_handler(functools.partial(self.unary, "Echo"), request, reply),
                "Write": grpc.unary_unary_rpc_method_handler(functools.partial(self.unary, "Write"), request, reply),
                "Watch": grpc.unary_stream_rpc_method_handler(self.watch, request, reply),
            },
        )
        control = grpc.method_handlers_generic_handler(
            CONTROL_SERVICE,
            {
                "Set": grpc.unary_unary_rpc_method_handler(self.set),
                "Stats": grpc.unary_unary_rpc_method_handler(self.stats),
            },
        )
        return probe, control


def serve(host: str, port: int, *, instance: str, version: str) -> tuple[grpc.Server, int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=64))
    server.add_generic_rpc_handlers(ProbeServer(instance=instance, version=version).handlers())
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    server.start()
    for service in ("", SERVICE):
        health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    return server, bound


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A controllable meshtest.v1.Probe backend (gRPC).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--instance", required=True)
    parser.add_argument("--version", default="v1")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    server, port = serve(args.host, args.port, instance=args.instance, version=args.version)
    stopping = threading.Event()

    def terminate(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGINT, terminate)
    print(f"probe {args.instance} ({args.version}) listening on {args.host}:{port}", flush=True)
    stopping.wait()
    server.stop(grace=1).wait()
    return 0


# --- the harness: a backend and its sidecar as real processes ----------------------------------


@dataclass
class ProbeBackend:
    """One probe instance (agent process + sidecar) and the handles a test steers it with."""

    name: str
    instance: str
    version: str
    agent_port: int
    ports: SidecarPorts
    config: Path
    tmp: Path
    agent: Process | None = None
    sidecar: Process | None = None
    _channel: grpc.Channel | None = field(default=None, repr=False)

    @property
    def inbound_address(self) -> str:
        return self.ports.inbound_address

    def _control(self, method: str, payload: dict[str, Any]) -> dict[str, Any]:
        if self._channel is None:
            self._channel = grpc.insecure_channel(f"127.0.0.1:{self.agent_port}")
        call = self._channel.unary_unary(
            f"/{CONTROL_SERVICE}/{method}", request_serializer=None, response_deserializer=None
        )
        answer: dict[str, Any] = json.loads(call(json.dumps(payload).encode(), timeout=5))
        return answer

    def behave(
        self, *, fail_next: int = 0, fail_always: bool = False, code: str = "UNAVAILABLE", delay_ms: int = 0
    ) -> None:
        """Sets what the instance does from now on (the previous behaviour is dropped)."""
        self._control("Set", {"fail_next": fail_next, "fail_always": fail_always, "code": code, "delay_ms": delay_ms})

    def reset(self) -> None:
        """Healthy behaviour and zero counts."""
        self._control("Set", {"reset": True})

    def stats(self) -> dict[str, Any]:
        return self._control("Stats", {})

    def calls(self, method: str = "Echo") -> int:
        """Calls of `method` (Echo, Write, Watch) the instance has seen."""
        return int(self.stats()["calls"].get(method, 0))

    def start_agent(self) -> None:
        argv = [
            sys.executable,
            "-m",
            "tests.integration.backends",
            "--port",
            str(self.agent_port),
            "--instance",
            self.instance,
            "--version",
            self.version,
        ]
        self.agent = start(f"probe-{self.instance}-{self.agent_port}", argv, self.tmp)
        wait_for(
            lambda: grpc_serving(f"127.0.0.1:{self.agent_port}"), what=f"probe {self.instance}", process=self.agent
        )

    def start_sidecar(self, *, wait_ready: bool = True) -> None:
        self.sidecar = start_sidecar(self.name, self.config, self.tmp, self.ports, wait_ready=wait_ready)

    def stop(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        for process in (self.sidecar, self.agent):
            if process is not None:
                process.stop()


def probe_config(
    tmp: Path, *, name: str, instance: str, version: str, agent_port: int, ports: SidecarPorts, control_plane: str
) -> Path:
    """The sidecar's agent.yaml for one probe instance, registered with `control_plane`."""
    config = {
        "agent": {"name": name, "version": version, "team": "tests"},
        "upstream": {"url": f"http://127.0.0.1:{agent_port}", "protocol": "grpc"},
        "contract": {"protos": [str(PROTO)]},
        "health": {"interval": "200ms", "timeout": "200ms", "unhealthy_threshold": 1},
        "listen": {
            "inbound": ports.inbound_address,
            "egress_grpc": f"127.0.0.1:{ports.egress_grpc}",
            "egress_http": f"127.0.0.1:{ports.egress_http}",
            "admin": f"127.0.0.1:{ports.admin}",
        },
        "limits": {"drain_timeout": "5s"},
        "control_plane": {"address": control_plane, "config_cache": str(tmp / f"xds-{name}-{instance}.json")},
    }
    path = tmp / f"{name}-{instance}-{ports.inbound}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@contextlib.contextmanager
def probe_with_sidecar(
    tmp: Path, *, instance: str, version: str = "v1", control_plane: str, name: str = "probe"
) -> Iterator[ProbeBackend]:
    """A probe instance and its sidecar on free ports, registered with the control plane at `control_plane`."""
    ports = SidecarPorts()
    agent_port = free_port()
    config = probe_config(
        tmp,
        name=name,
        instance=instance,
        version=version,
        agent_port=agent_port,
        ports=ports,
        control_plane=control_plane,
    )
    backend = ProbeBackend(name, instance, version, agent_port, ports, config, tmp)
    try:
        backend.start_agent()
        backend.start_sidecar()
        yield backend
    finally:
        backend.stop()


__all__ = [
    "ECHO",
    "WATCH",
    "WRITE",
    "ProbeBackend",
    "ProbeMessages",
    "ProbeServer",
    "probe_messages",
    "probe_with_sidecar",
]

if __name__ == "__main__":
    sys.exit(main())
