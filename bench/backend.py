"""The benchmark's upstream agent: a minimal gRPC server implementing bench.v1.Echo.

It does as little as a correct agent can, so that what the hop benchmark
measures is the proxy in front of it: replies to `Echo` are cached by request
bytes (h2load sends one body over and over), and `Ticks` streams small
messages on a timer for the streaming scenario. It also serves
grpc.health.v1 (the sidecar probes it) and `bench.v1.Control/Counters`, raw
bytes in and JSON out, outside the contract: how many calls it served, so a
run can check that every request h2load counted as a success really reached
the agent (h2load sees HTTP status 200, not grpc-status).

Run: `python -m bench.backend --port 0` prints `listening on 127.0.0.1:<port>`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]

from agentmesh.protoc import compile_descriptor_set

PROTO = Path(__file__).resolve().parent / "proto" / "bench.proto"
SERVICE = "bench.v1.Echo"
CONTROL_SERVICE = "bench.v1.Control"
ECHO_PATH = f"/{SERVICE}/Echo"
TICKS_PATH = f"/{SERVICE}/Ticks"
COUNTERS_PATH = f"/{CONTROL_SERVICE}/Counters"
# Replies cached by request bytes; bounded so a varied load cannot grow it without end.
MAX_CACHED_REPLIES = 1024
SERVER_OPTIONS = [
    ("grpc.max_concurrent_streams", 1_000_000),
    ("grpc.max_receive_message_length", 8 * 1024 * 1024),
    ("grpc.so_reuseport", 0),
]


class Messages:
    """The bench.v1 message classes, compiled from bench.proto at start-up."""

    def __init__(self, proto: Path = PROTO) -> None:
        fds: descriptor_pb2.FileDescriptorSet = compile_descriptor_set([proto])
        pool = descriptor_pool.DescriptorPool()
        for file in fds.file:
            pool.Add(file)
        self.descriptor_set = fds

        def cls(name: str) -> type[message.Message]:
            return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"bench.v1.{name}"))

        self.echo_request = cls("EchoRequest")
        self.echo_reply = cls("EchoReply")
        self.tick_request = cls("TickRequest")
        self.tick = cls("Tick")
        self.item = cls("Item")


class Backend:
    """The three handlers and their counters."""

    def __init__(self, messages: Messages) -> None:
        self.messages = messages
        self.counters: dict[str, int] = {"echo": 0, "streams_opened": 0, "streams_finished": 0, "ticks": 0}
        self._replies: dict[bytes, bytes] = {}

    def echo(self, request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        self.counters["echo"] += 1
        reply = self._replies.get(request)
        if reply is None:
            parsed: Any = self.messages.echo_request.FromString(request)
            reply = self.messages.echo_reply(id=parsed.id, payload=b"r" * parsed.reply_bytes).SerializeToString()
            if len(self._replies) < MAX_CACHED_REPLIES:
                self._replies[request] = reply
        return reply

    async def ticks(self, request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> AsyncIterator[bytes]:
        parsed: Any = self.messages.tick_request.FromString(request)
        payload = b"t" * parsed.tick_bytes
        interval = parsed.interval_ms / 1000
        self.counters["streams_opened"] += 1
        try:
            for seq in range(parsed.count):
                if seq and interval:
                    await asyncio.sleep(interval)
                self.counters["ticks"] += 1
                yield self.messages.tick(seq=seq, payload=payload).SerializeToString()
        finally:
            self.counters["streams_finished"] += 1

    def counters_json(self, request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        return json.dumps(self.counters).encode()

    def handlers(self) -> tuple[grpc.GenericRpcHandler, ...]:
        echo = grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Echo": grpc.unary_unary_rpc_method_handler(self.echo),
                "Ticks": grpc.unary_stream_rpc_method_handler(self.ticks),
            },
        )
        control = grpc.method_handlers_generic_handler(
            CONTROL_SERVICE, {"Counters": grpc.unary_unary_rpc_method_handler(self.counters_json)}
        )
        return echo, control


async def until_signalled() -> None:
    """Returns on SIGTERM or SIGINT, which is how the suite stops its helper processes."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def serve(host: str, port: int) -> None:
    backend = Backend(Messages())
    server = grpc.aio.server(options=SERVER_OPTIONS)
    server.add_generic_rpc_handlers(backend.handlers())
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot listen on {host}:{port}")
    await server.start()
    for name in ("", SERVICE):
        await health.set(name, health_pb2.HealthCheckResponse.SERVING)
    print(f"listening on {host}:{bound}", flush=True)
    await until_signalled()
    await server.stop(1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The benchmark's minimal gRPC agent (bench.v1.Echo).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    asyncio.run(serve(args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
