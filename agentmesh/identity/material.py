"""The identity a workload holds right now, and the source that keeps it fresh.

`IdentityMaterial` is immutable: rotation publishes a new one and tells
subscribers, so a listener or channel pool swaps credentials with one reference
assignment and calls in flight keep the material they started with.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from agentmesh.identity.spiffe import SpiffeId


@dataclass(frozen=True)
class IdentityMaterial:
    """A private key, its certificate chain and the roots to verify peers with (all PEM)."""

    spiffe_id: SpiffeId
    private_key_pem: bytes
    # Leaf first, then intermediates.
    certificate_chain_pem: bytes
    trust_bundle_pem: bytes
    not_before: datetime
    not_after: datetime
    # Increases with every rotation; lets holders tell new material from old cheaply.
    generation: int


class IdentitySource(Protocol):
    """Where a listener or client gets the current identity from."""

    def current(self) -> IdentityMaterial | None:
        """The newest material; None before the first certificate arrives."""
        ...

    def subscribe(self, callback: Callable[[IdentityMaterial], None]) -> Callable[[], None]:
        """Calls `callback` with each new material (in the event loop's thread); returns an unsubscribe function."""
        ...
