"""The runtime's floor: a gRPC proxy with no features at all, measured beside the sidecar.

One grpc.aio server whose every call is one call on one grpc.aio channel to
the backend, bytes in and bytes out: no contract, access policy, metrics,
spans, access log, health or xDS. Any proxy built on grpcio in Python pays
at least this per call, per open stream and at idle; the sidecar's figures
minus these are what its features cost, and a target below these is out of
reach for a grpc.aio data path whatever the features cost.

Run: `python -m bench.floor --upstream 127.0.0.1:<port> --port 0` prints
`listening on 127.0.0.1:<port>`.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator

import grpc

from bench.backend import SERVER_OPTIONS, TICKS_PATH, until_signalled


def _same(data: bytes) -> bytes:
    return data


class Passthrough(grpc.GenericRpcHandler):
    """Forwards every method to the upstream: `Ticks` as a server stream, the rest unary."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._channel = channel
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        path: str = handler_call_details.method
        handler = self._handlers.get(path)
        if handler is None:
            handler = self._handlers[path] = self._handler(path)
        return handler

    def _handler(self, path: str) -> grpc.RpcMethodHandler:
        if path == TICKS_PATH:
            stream_call = self._channel.unary_stream(path, request_serializer=_same, response_deserializer=_same)

            async def stream(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> AsyncIterator[bytes]:
                async for reply in stream_call(request, timeout=context.time_remaining()):
                    yield reply

            return grpc.unary_stream_rpc_method_handler(stream, request_deserializer=_same, response_serializer=_same)
        unary_call = self._channel.unary_unary(path, request_serializer=_same, response_deserializer=_same)

        async def unary(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
            reply: bytes = await unary_call(request, timeout=context.time_remaining())
            return reply

        return grpc.unary_unary_rpc_method_handler(unary, request_deserializer=_same, response_serializer=_same)


async def serve(host: str, port: int, upstream: str) -> None:
    # The sidecar's channel to its agent has transparent retries off as well.
    channel = grpc.aio.insecure_channel(upstream, options=[("grpc.enable_retries", 0)])
    server = grpc.aio.server(options=SERVER_OPTIONS)
    server.add_generic_rpc_handlers((Passthrough(channel),))
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot listen on {host}:{port}")
    await server.start()
    print(f"listening on {host}:{bound}", flush=True)
    await until_signalled()
    await server.stop(1)
    await channel.close(None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A gRPC proxy with no features: the floor the sidecar is built on.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--upstream", required=True, help="host:port of the backend")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.host, args.port, args.upstream))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
