"""Sends one call to a target sidecar's inbound listener, as raw bytes.

Both egress listeners end here. The call holds its channel (plaintext, or
mutual TLS to the identity the target must prove) from start to end, so a
certificate rotation retires the channel without cutting the call. gRPC
failures from the peer become `PeerStatus` (code, message, field violations
and the peer's trailers, so the gRPC egress can relay them unchanged);
transport failures become NoRoute / UpstreamTimeout.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Iterator, Mapping

import grpc
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind

from agentmesh.telemetry.tracing import inject
from sidecar.errors import MeshError, NoRoute, UpstreamTimeout
from sidecar.filters.tracing import CallTracer, end_span
from sidecar.inbound.call import SOURCE_AGENT_HEADER, SOURCE_TEAM_HEADER
from sidecar.outbound.targets import Target, TargetDirectory
from sidecar.status import field_violations, status_from_error


class PeerStatus(MeshError):
    """The target answered with an error status; relayed to the caller as is."""

    def __init__(self, error: grpc.aio.AioRpcError) -> None:
        super().__init__(error.details() or error.code().name)
        self.code = error.code()
        self.reason = f"peer_{self.code.name.lower()}"
        self.trailing_metadata = tuple(error.trailing_metadata() or ())
        details = status_from_error(error)
        self.violations = tuple(field_violations(details)) if details else ()


def _translate(error: grpc.aio.AioRpcError, target: Target) -> MeshError:
    code = error.code()
    if code == grpc.StatusCode.UNAVAILABLE and "failed to connect" in (error.debug_error_string() or "").lower():
        return NoRoute(f"agent {target.name!r} at {target.address} is unreachable: {error.details()}")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED and not error.trailing_metadata():
        return UpstreamTimeout(f"deadline exceeded calling {target.name!r}")
    return PeerStatus(error)


class Forwarder:
    """Calls target sidecars on behalf of the local agent, one CLIENT span per attempt."""

    def __init__(self, directory: TargetDirectory, *, agent: str, team: str, version: str = "") -> None:
        self._directory = directory
        self._identity = ((SOURCE_AGENT_HEADER, agent), (SOURCE_TEAM_HEADER, team))
        self._tracer = CallTracer(agent=agent, version=version, kind=SpanKind.CLIENT)

    def _outgoing(self, context: Context) -> tuple[tuple[str, str], ...]:
        """The attempt's trace context plus this sidecar's (asserted) identity."""
        carrier: dict[str, str] = {}
        inject(carrier, context)
        return (*carrier.items(), *self._identity)

    @contextlib.contextmanager
    def _attempt(self, target: Target, path: str, metadata: Mapping[str, str]) -> Iterator[Context]:
        """The attempt's CLIENT span around the call; gRPC failures become domain errors here."""
        span, context = self._tracer.start(path, metadata, destination=target.name)
        code, error = "OK", None
        try:
            yield context
        except grpc.aio.AioRpcError as exc:
            error = _translate(exc, target)
            code = error.code.name
            raise error from exc
        except BaseException:
            code = "CANCELLED"
            raise
        finally:
            end_span(span, code, error)

    async def unary(
        self, target: Target, path: str, request: bytes, *, metadata: Mapping[str, str], timeout: float | None
    ) -> bytes:
        with self._directory.lease(target) as channel:
            call = channel.unary(path)
            with self._attempt(target, path, metadata) as context:
                response: bytes = await call(request, metadata=self._outgoing(context), timeout=timeout)
        return response

    async def stream(
        self, target: Target, path: str, request: bytes, *, metadata: Mapping[str, str], timeout: float | None
    ) -> AsyncGenerator[bytes, None]:
        with self._directory.lease(target) as channel:
            call = channel.stream(path)
            with self._attempt(target, path, metadata) as context:
                responses = call(request, metadata=self._outgoing(context), timeout=timeout)
                try:
                    async for chunk in responses:
                        yield chunk
                finally:
                    responses.cancel()
