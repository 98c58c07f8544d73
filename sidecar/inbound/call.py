"""The per-call state that travels down the inbound chain."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import Message
from opentelemetry.context import Context

from sidecar.contract import MethodContract
from sidecar.filters.authn import PLAINTEXT, Peer

# Identity claims a caller's sidecar sends. Claims only: access control reads the peer certificate
# (InboundCall.peer); the inbound side sets SOURCE_AGENT_HEADER for the agent from that certificate.
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
    # Who is calling, from the peer certificate (sidecar/filters/authn.py); never from headers.
    peer: Peer = PLAINTEXT
    request: Message | None = None
    # The SERVER span's context, set when the call enters the chain.
    trace_context: Context | None = None
    # The access policy that refused the call, for the access log.
    denied_by: str | None = None

    @property
    def source_agent(self) -> str:
        """The caller's agent name as its certificate proves it; "unknown" without one."""
        return self.peer.source


@dataclass(frozen=True, slots=True)
class Reply:
    """A checked response; `wire` is the agent's own bytes when they can be reused."""

    message: Message
    wire: bytes | None = None

    def serialize(self) -> bytes:
        return self.wire if self.wire is not None else self.message.SerializeToString()
