"""gRPC egress listener (:15001): the agent calls other agents by method path.

The method's service is the capability; the `x-agentmesh-target` metadata key
narrows the call to one agent (grpcio servers cannot see `:authority`). Any
method is accepted: the handler is cardinality-agnostic (stream-stream on the
wire) and the target's contract says whether a reply streams. Routing,
retries and balancing are the egress path's (sidecar/outbound/egress.py).
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator

import grpc

from sidecar.errors import ContractViolation, MeshError
from sidecar.inbound.server import metadata_of
from sidecar.outbound.egress import Egress
from sidecar.outbound.forward import PeerStatus
from sidecar.status import abort

# Handlers are cached per method path; paths come from the agent, so bound it.
MAX_CACHED_HANDLERS = 1024


class EgressGrpcHandler(grpc.GenericRpcHandler):
    def __init__(self, egress: Egress) -> None:
        self._egress = egress
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
        with self._egress.observed(path, metadata) as record:
            try:
                plan = await self._egress.plan(record, metadata)
                request = await _single_request(requests)
                timeout = context.time_remaining()
                if plan.method.server_streaming:
                    async for chunk in self._egress.stream(plan, record, request, metadata, timeout):
                        yield chunk
                else:
                    yield await self._egress.unary(plan, record, request, metadata, timeout)
            except PeerStatus as exc:
                record.code = exc.code.name
                await context.abort(exc.code, exc.message, exc.trailing_metadata)  # type: ignore[arg-type]
            except MeshError as exc:
                record.code = exc.code.name
                await abort(context, exc)


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
