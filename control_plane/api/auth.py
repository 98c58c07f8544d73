"""Bearer-token authentication of the admin API.

The control plane serves ADS, sidecar registration, health, reflection and the
admin API on one gRPC port. Only the admin API (`/agentmesh.v1.ControlPlane/*`)
changes or reveals policy, so only its calls must carry
`authorization: Bearer <token>` metadata with the token the control plane was
started with; every other service passes through untouched (sidecars and
Envoy authenticate with mutual TLS once it exists, not with this token).

A call without the header, with another scheme or with a wrong token ends
with UNAUTHENTICATED and a message saying which; tokens are compared in
constant time.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

log = logging.getLogger(__name__)

PROTECTED_PREFIX = "/agentmesh.v1.ControlPlane/"
AUTHORIZATION = "authorization"
SCHEME = "bearer"


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):
    """Requires `authorization: Bearer <token>` on admin API methods (those under `prefix`)."""

    def __init__(self, token: str, *, prefix: str = PROTECTED_PREFIX) -> None:
        if not token:
            raise ValueError("the admin token must not be empty")
        self._token = token.encode()
        self._prefix = prefix

    def __repr__(self) -> str:
        return f"TokenAuthInterceptor(prefix={self._prefix!r})"

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if handler is None or not handler_call_details.method.startswith(self._prefix):
            return handler
        problem = self.problem(handler_call_details.invocation_metadata or ())
        if problem is None:
            return handler
        log.warning("admin call refused", extra={"rpc_method": handler_call_details.method, "reason": problem})
        return _refusing(handler, problem)

    def problem(self, metadata: Any) -> str | None:
        """Why a call with this invocation metadata is refused; None when it carries the right token."""
        values = [value for key, value in metadata if key.lower() == AUTHORIZATION]
        if not values:
            return (
                "missing 'authorization: Bearer <token>' metadata: the admin API needs the control plane's token "
                "(the CLI's --token option or AGENTMESH_TOKEN)"
            )
        value = values[0]
        text = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
        scheme, _, credentials = text.strip().partition(" ")
        if scheme.lower() != SCHEME or not credentials.strip():
            return "the authorization metadata must be 'Bearer <token>'"
        if not hmac.compare_digest(credentials.strip().encode(), self._token):
            return "invalid token: it does not match the control plane's admin token"
        return None


def _refusing(handler: grpc.RpcMethodHandler[Any, Any], message: str) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler of the same shape as `handler` that ends every call with UNAUTHENTICATED."""

    async def refuse(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    codec: dict[str, Any] = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse, **codec)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse, **codec)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse, **codec)
    return grpc.unary_unary_rpc_method_handler(refuse, **codec)
