"""The per-call state that travels down the inbound chain."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import Message
from opentelemetry.context import Context

from sidecar.contract import MethodContract

SOURCE_AGENT_HEADER = "x-agentmesh-source-agent"
SOURCE_TEAM_HEADER = "x-agentmesh-source-team"


@dataclass(slots=True)
class InboundCall:
    """One call on its way to the agent.

    `body` is the request as it arrived: wire bytes for typed gRPC calls, a
    JSON mapping for `Agent.Invoke` with a Struct payload.
    """

    method: MethodContract
    body: bytes | Mapping[str, Any]
    metadata: Mapping[str, str]
    # Seconds the caller is still willing to wait (None: no deadline set).
    time_remaining: float | None
    source_agent: str = "unknown"
    request: Message | None = None
    # The SERVER span's context, set when the call enters the chain.
    trace_context: Context | None = None
    # The access policy that refused the call, for the access log.
    denied_by: str | None = None


@dataclass(frozen=True, slots=True)
class Reply:
    """A checked response; `wire` is the agent's own bytes when they can be reused."""

    message: Message
    wire: bytes | None = None

    def serialize(self) -> bytes:
        return self.wire if self.wire is not None else self.message.SerializeToString()
