"""Calls an untouched agent that already speaks gRPC (the upstream step of the inbound chain).

The request has passed the contract, so its bytes are forwarded unchanged
(no re-serialization) over one grpc.aio channel to the agent, and each response
message comes back as raw bytes for the contract filter. The call's deadline
becomes the gRPC timeout and cancelling the calling task cancels the RPC, so
both propagate to the agent. Every grpc.aio failure leaves here as a
`sidecar.errors` type.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncGenerator, Mapping
from urllib.parse import urlsplit

import grpc
import grpc.aio

from sidecar.config.bootstrap import Upstream
from sidecar.contract import MethodContract
from sidecar.errors import ContractViolation, MeshError, UpstreamStatus, UpstreamTimeout, UpstreamUnavailable
from sidecar.upstream.base import Payload, UpstreamCall

# Legal gRPC metadata keys (lowercase); "grpc-" keys and pseudo-headers belong to the transport.
_METADATA_KEY = re.compile(r"^[0-9a-z_.-]+$")
_TRANSPORT_KEYS = frozenset({"connection", "content-type", "host", "te", "transfer-encoding", "upgrade", "user-agent"})
# What grpc core says when it never reached the agent (as opposed to the agent answering UNAVAILABLE).
_CONNECTION_FAILURES = (
    "failed to connect",
    "connection refused",
    "connect failed",
    "connection reset",
    "socket closed",
    "broken pipe",
    "dns resolution failed",
    "name resolution",
    "no route to host",
    "endpoint closing",
    "connections to all backends failing",
)
_TOO_LARGE = "received message larger than max"


RECONNECT_BACKOFF_MS = 1000


class GrpcPassthroughAdapter:
    """UpstreamAdapter for agents that speak gRPC: validated bytes in, raw bytes out."""

    def __init__(self, upstream: Upstream, *, max_message_bytes: int) -> None:
        parts = urlsplit(upstream.url)
        self._target = parts.netloc.rpartition("@")[2]
        self._secure = parts.scheme == "https"
        self._max = max_message_bytes
        self._options = (
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.primary_user_agent", "agentmesh-sidecar"),
            # The agent is local: reconnect within a second of it coming back (grpc's default backoff
            # grows to 120 s, so calls could keep failing while the health probe already says healthy).
            ("grpc.initial_reconnect_backoff_ms", RECONNECT_BACKOFF_MS),
            ("grpc.min_reconnect_backoff_ms", RECONNECT_BACKOFF_MS),
            ("grpc.max_reconnect_backoff_ms", RECONNECT_BACKOFF_MS),
            # No service config ever asks this channel to retry, yet grpc's retry filter buffers every call
            # in case it might (about a tenth of the channel's CPU per call). Retries are the caller's
            # sidecar's decision (the route's retry policy), made with the skill's idempotency in mind; a call
            # the agent's connection refused before it was sent fails UNAVAILABLE instead of being re-sent.
            ("grpc.enable_retries", 0),
        )
        self._channel: grpc.aio.Channel | None = None
        self._unary: dict[str, grpc.aio.UnaryUnaryMultiCallable] = {}
        self._streaming: dict[str, grpc.aio.UnaryStreamMultiCallable] = {}
        self._closed = False

    def __repr__(self) -> str:
        scheme = "https" if self._secure else "http"
        return f"GrpcPassthroughAdapter(target='{scheme}://{self._target}', max_message_bytes={self._max})"

    async def unary(self, call: UpstreamCall) -> Payload:
        timeout = _timeout(call)
        callable_ = self._unary.get(call.method.path)
        if callable_ is None:
            callable_ = self._unary[call.method.path] = self._client().unary_unary(
                call.method.path, request_serializer=None, response_deserializer=None
            )
        rpc = callable_(_request_bytes(call), timeout=timeout, metadata=_metadata(call.headers))
        try:
            response: bytes = await rpc
        except grpc.aio.AioRpcError as exc:
            raise _translate(exc, self._target, call.method) from exc
        except asyncio.CancelledError:
            rpc.cancel()
            raise
        except grpc.aio.UsageError as exc:
            raise UpstreamUnavailable(f"gRPC call {call.method.path} to {self._target} failed: {exc}") from exc
        return Payload(response, "proto")

    async def stream(self, call: UpstreamCall) -> AsyncGenerator[Payload, None]:
        timeout = _timeout(call)
        callable_ = self._streaming.get(call.method.path)
        if callable_ is None:
            callable_ = self._streaming[call.method.path] = self._client().unary_stream(
                call.method.path, request_serializer=None, response_deserializer=None
            )
        rpc = callable_(_request_bytes(call), timeout=timeout, metadata=_metadata(call.headers))
        try:
            async for message in rpc:
                yield Payload(message, "proto")
        except grpc.aio.AioRpcError as exc:
            raise _translate(exc, self._target, call.method) from exc
        except grpc.aio.UsageError as exc:
            raise UpstreamUnavailable(f"gRPC stream {call.method.path} to {self._target} failed: {exc}") from exc
        finally:
            # Cancelled, failed or closed early by the consumer: end the agent's stream too.
            if not rpc.done():
                rpc.cancel()

    async def aclose(self) -> None:
        self._closed = True
        channel, self._channel = self._channel, None
        self._unary.clear()
        self._streaming.clear()
        if channel is not None:
            await channel.close(None)

    def _client(self) -> grpc.aio.Channel:
        channel = self._channel
        if channel is None:
            if self._closed:
                raise UpstreamUnavailable(f"the adapter for {self._target} is closed")
            # Created lazily so it binds to the running event loop.
            if self._secure:
                credentials = grpc.ssl_channel_credentials()
                channel = grpc.aio.secure_channel(self._target, credentials, options=self._options)
            else:
                channel = grpc.aio.insecure_channel(self._target, options=self._options)
            self._channel = channel
        return channel


def _timeout(call: UpstreamCall) -> float | None:
    if call.timeout is not None and call.timeout <= 0:
        raise UpstreamTimeout(f"the deadline for {call.method.path} passed before the agent was called")
    return call.timeout


def _request_bytes(call: UpstreamCall) -> bytes:
    return call.request_bytes if call.request_bytes is not None else call.request.SerializeToString()


def _metadata(headers: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """The headers gRPC can carry: lowercase legal keys, printable ASCII values, no transport keys."""
    return tuple(
        (key, value)
        for key, value in headers.items()
        if _KEY_CARRIED.get(key) or _carried(key)
        if value.isascii() and value.isprintable()
    )


# Header names seen so far -> whether gRPC metadata can carry them; a call's keys are nearly always
# the same few (traceparent, the source agent, AgentConfig headers), so each is checked once.
_KEY_CARRIED: dict[str, bool] = {}
_MAX_KEYS_REMEMBERED = 1024


def _carried(key: str) -> bool:
    carried = bool(
        _METADATA_KEY.match(key)
        and not key.startswith("grpc-")
        and not key.endswith("-bin")
        and key not in _TRANSPORT_KEYS
    )
    if len(_KEY_CARRIED) < _MAX_KEYS_REMEMBERED:
        _KEY_CARRIED[key] = carried
    return carried


def _translate(exc: grpc.aio.AioRpcError, target: str, method: MethodContract) -> MeshError:
    code = exc.code()
    details = exc.details() or ""
    lowered = details.lower()
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return UpstreamTimeout(f"the agent did not answer {method.path} within the deadline: {details}")
    if code is grpc.StatusCode.UNAVAILABLE and any(marker in lowered for marker in _CONNECTION_FAILURES):
        return UpstreamUnavailable(f"cannot reach the agent at {target} for {method.path}: {details}")
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED and _TOO_LARGE in lowered:
        return ContractViolation(
            f"the agent's response to {method.path} exceeds the message limit: {details}",
            side="response",
            reason="too_large",
        )
    return UpstreamStatus(f"agent answered {code.name}: {details}", code=code)
