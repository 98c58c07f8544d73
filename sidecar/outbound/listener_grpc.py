"""gRPC egress listener (:15001): the agent calls other agents by method path.

The method's service is the capability; the `x-agentmesh-target` metadata key
narrows the call to one agent (grpcio servers cannot see `:authority`). Any
method is accepted: the handler is cardinality-agnostic (stream-stream on the
wire) and the target's contract says whether a reply streams.
"""

from __future__ import annotations

import functools
import time
from collections.abc import AsyncIterator

import grpc

from agentmesh.telemetry.logs import log_access
from sidecar.errors import ContractViolation, MeshError
from sidecar.inbound.server import metadata_of
from sidecar.outbound.forward import Forwarder, PeerStatus
from sidecar.outbound.targets import TargetDirectory
from sidecar.stats import SidecarStats
from sidecar.status import abort

TARGET_HEADER = "x-agentmesh-target"
# Handlers are cached per method path; paths come from the agent, so bound it.
MAX_CACHED_HANDLERS = 1024


class EgressGrpcHandler(grpc.GenericRpcHandler):
    def __init__(self, *, directory: TargetDirectory, forwarder: Forwarder, stats: SidecarStats, agent: str) -> None:
        self._directory = directory
        self._forwarder = forwarder
        self._stats = stats
        self._agent = agent
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        path = handler_call_details.method
        handler = self._handlers.get(path)
        if handler is None:
            handler = grpc.stream_stream_rpc_method_handler(functools.partial(self._call, path))
            if len(self._handlers) < MAX_CACHED_HANDLERS:
                self._handlers[path] = handler
        return handler

    async def _call(
        self, path: str, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        metadata = metadata_of(context)
        started = time.perf_counter()
        destination, version, code = metadata.get(TARGET_HEADER, "unknown"), "unknown", "OK"
        route = None
        try:
            target, method = await self._directory.resolve(path, metadata.get(TARGET_HEADER))
            destination, version = target.name, target.version
            route = self._stats.route(
                direction="outbound",
                source_agent=self._agent,
                destination_agent=destination,
                destination_version=version,
                rpc_method=method.path,
            )
            route.start()
            request = await _single_request(requests)
            timeout = context.time_remaining()
            if method.server_streaming:
                async for chunk in self._forwarder.stream(target, path, request, metadata=metadata, timeout=timeout):
                    yield chunk
            else:
                yield await self._forwarder.unary(target, path, request, metadata=metadata, timeout=timeout)
        except PeerStatus as exc:
            code = exc.code.name
            await context.abort(exc.code, exc.message, exc.trailing_metadata)  # type: ignore[arg-type]
        except MeshError as exc:
            code = exc.code.name
            await abort(context, exc)
        except BaseException:
            code = "CANCELLED"
            raise
        finally:
            elapsed = time.perf_counter() - started
            if route is not None:
                route.finish(code, elapsed)
            log_access(
                direction="outbound",
                source=self._agent,
                destination=destination,
                version=version,
                method=path,
                code=code,
                duration_ms=round(elapsed * 1000, 3),
                traceparent=metadata.get("traceparent", ""),
            )


async def _single_request(requests: AsyncIterator[bytes]) -> bytes:
    """Skills take exactly one request message."""
    messages = [message async for message in requests]
    if len(messages) != 1:
        raise ContractViolation(
            f"expected exactly one request message, got {len(messages)} (client-streaming is not supported)",
            side="request",
            reason="cardinality",
        )
    return messages[0]
