"""The upstream boundary: what the inbound chain hands to an adapter, and what it gets back.

The last step of the inbound chain calls the untouched agent through an
`UpstreamAdapter`. An adapter owns one protocol (HTTP/JSON or gRPC), its
connection pool, deadline and cancellation propagation, and the translation of
third-party exceptions into `sidecar.errors` types. It never decodes the
agent's answer: it returns the raw `Payload` and the contract filter checks it.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

from google.protobuf.message import Message

from sidecar.config.bootstrap import Upstream
from sidecar.contract import MethodContract


@dataclass(frozen=True, slots=True)
class UpstreamCall:
    """One call to the agent, after the request passed the contract."""

    method: MethodContract
    # The validated typed request.
    request: Message
    # Original wire bytes when the call arrived as protobuf (forwarded unchanged);
    # None means serialize `request`.
    request_bytes: bytes | None
    # Seconds left for the whole call, already min(caller deadline, skill
    # timeout, upstream.timeout); None means no deadline.
    timeout: float | None
    # Headers for the agent (lowercase keys): traceparent, tracestate, baggage,
    # x-agentmesh-config-*, x-agentmesh-source-agent, ...
    headers: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Payload:
    """One response message as the agent sent it; the contract filter decodes and checks it."""

    data: bytes
    encoding: Literal["proto", "json"]


class UpstreamAdapter(Protocol):
    """Calls the agent over one protocol.

    Errors are `sidecar.errors` types only: UpstreamUnavailable, UpstreamTimeout,
    UpstreamStatus, or ContractViolation(side="response") for protocol-level
    garbage. Cancelling the calling task cancels the call to the agent.
    """

    async def unary(self, call: UpstreamCall) -> Payload:
        """Sends one request, returns the one response message."""
        ...

    def stream(self, call: UpstreamCall) -> AsyncGenerator[Payload, None]:
        """Server streaming: yields each response message as it arrives.

        Close the iterator (`contextlib.aclosing`) when stopping early, so the
        agent's stream is released at once rather than when garbage collected.
        """
        ...

    async def aclose(self) -> None:
        """Closes the connection pool; in-flight calls fail."""
        ...


def adapter_for(
    upstream: Upstream, *, max_message_bytes: int, json_names: Literal["proto", "json"] = "proto"
) -> UpstreamAdapter:
    """The adapter for `upstream.protocol`.

    `json_names` picks the JSON field names sent to an HTTP agent: "proto"
    (snake_case, as declared) or "json" (lowerCamelCase, the proto3 JSON default).
    """
    # Imported here: each implementation imports this module for the shared types.
    if upstream.protocol == "grpc":
        from sidecar.upstream.grpc_passthrough import GrpcPassthroughAdapter

        return GrpcPassthroughAdapter(upstream, max_message_bytes=max_message_bytes)
    from sidecar.upstream.http_json import HttpJsonAdapter

    return HttpJsonAdapter(upstream, max_message_bytes=max_message_bytes, json_names=json_names)
