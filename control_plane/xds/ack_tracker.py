"""ACK/NACK state per (node, resource type): what was sent, what was accepted, what was rejected.

The ADS server reports every response it sends (`record_sent`) and every
request a node answers with (`record_request`); the tracker classifies the
request against the last nonce sent (xDS state-of-the-world rules) and keeps:

- the version and nonce last sent, and when;
- the version last ACKed (a request carrying the last nonce and no
  `error_detail`), and when;
- the last NACK (a request carrying the last nonce and an `error_detail`):
  nonce, the rejected version, the consumer's error code and message, and when.

Rules: a request whose nonce is not the last one sent is stale and changes
nothing; a NACK never advances the ACKed version. `status()` condenses the
state for the CLI (`agentmesh proxy-status`) as SYNCED, STALE (sent, not yet
ACKed), NACKED or NOT_SENT; `snapshot()` lists every row.

Pure bookkeeping: no grpc, no asyncio. Times come from the injected clock
(wall-clock seconds by default, as the CLI shows them).
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass, replace


class SyncStatus(enum.Enum):
    """How a node stands with one resource type."""

    SYNCED = "SYNCED"  # the last response sent was ACKed
    STALE = "STALE"  # a response was sent and not yet answered
    NACKED = "NACKED"  # the last response sent was rejected
    NOT_SENT = "NOT_SENT"  # nothing of this type was sent to the node


class RequestKind(enum.Enum):
    """What a DiscoveryRequest means relative to the last response sent."""

    INITIAL = "INITIAL"  # no response nonce: a (re)subscription
    ACK = "ACK"
    NACK = "NACK"
    STALE = "STALE"  # answers a response that is no longer the latest (or was never sent)


@dataclass(frozen=True)
class Nack:
    """A rejected response: its nonce and version, and the consumer's `error_detail`."""

    nonce: str
    version: str
    code: int
    message: str
    at: float


@dataclass(frozen=True)
class TypeSyncState:
    """One row of the ACK view: a node's state for one resource type."""

    node_id: str
    type_url: str
    status: SyncStatus
    sent_version: str | None = None
    sent_nonce: str | None = None
    sent_at: float | None = None
    acked_version: str | None = None
    acked_nonce: str | None = None
    acked_at: float | None = None
    last_nack: Nack | None = None


def _status(state: TypeSyncState) -> SyncStatus:
    if state.sent_nonce is None:
        return SyncStatus.NOT_SENT
    if state.acked_nonce == state.sent_nonce:
        return SyncStatus.SYNCED
    if state.last_nack is not None and state.last_nack.nonce == state.sent_nonce:
        return SyncStatus.NACKED
    return SyncStatus.STALE


class AckTracker:
    """Explicit ACK/NACK state per (node id, type URL)."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._states: dict[tuple[str, str], TypeSyncState] = {}

    def record_sent(self, node_id: str, type_url: str, *, version: str, nonce: str) -> None:
        """A response with `version` and `nonce` went to the node."""
        state = self._get(node_id, type_url)
        self._put(replace(state, sent_version=version, sent_nonce=nonce, sent_at=self._clock()))

    def record_request(
        self,
        node_id: str,
        type_url: str,
        *,
        response_nonce: str,
        version_info: str,
        error_code: int | None = None,
        error_message: str = "",
    ) -> RequestKind:
        """Classifies a request and updates the state; `error_code` is None when `error_detail` is unset."""
        state = self._get(node_id, type_url)
        if not response_nonce:
            return RequestKind.INITIAL
        if state.sent_nonce is None or response_nonce != state.sent_nonce:
            return RequestKind.STALE
        now = self._clock()
        if error_code is not None:
            nack = Nack(
                nonce=response_nonce,
                version=state.sent_version or "",
                code=error_code,
                message=error_message,
                at=now,
            )
            self._put(replace(state, last_nack=nack))
            return RequestKind.NACK
        self._put(replace(state, acked_version=version_info, acked_nonce=response_nonce, acked_at=now))
        return RequestKind.ACK

    def status(self, node_id: str, type_url: str) -> SyncStatus:
        return self._get(node_id, type_url).status

    def state(self, node_id: str, type_url: str) -> TypeSyncState:
        """The node's state for one type (status NOT_SENT when nothing is known)."""
        return self._get(node_id, type_url)

    def snapshot(self) -> list[TypeSyncState]:
        """Every (node, type) row, sorted by node id then type URL: the CLI view."""
        return [self._states[key] for key in sorted(self._states)]

    def node_ids(self) -> list[str]:
        return sorted({node_id for node_id, _ in self._states})

    def forget(self, node_id: str) -> None:
        """Drops every row of a node (its last stream closed)."""
        for key in [key for key in self._states if key[0] == node_id]:
            del self._states[key]

    def _get(self, node_id: str, type_url: str) -> TypeSyncState:
        state = self._states.get((node_id, type_url))
        if state is None:
            return TypeSyncState(node_id=node_id, type_url=type_url, status=SyncStatus.NOT_SENT)
        return state

    def _put(self, state: TypeSyncState) -> None:
        self._states[(state.node_id, state.type_url)] = replace(state, status=_status(state))
