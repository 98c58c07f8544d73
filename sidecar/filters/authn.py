"""Authentication: who is calling, as the caller's certificate proves it.

Inbound path: tracing → **authentication** → access (RBAC) → rate → contract(in) → agent.

The inbound listener checks the caller's certificate chain against the mesh's
trust bundle during the TLS handshake (sidecar/identity.py, inbound/server.py);
a caller without a certificate, or with one the bundle does not vouch for, is
refused there and never reaches this code (in permissive mode a plaintext
caller does). What a handler can read is grpc's auth context: the transport
(`transport_security_type` is `ssl` for TLS) and the certificate's SPIFFE URI
SAN (`peer_spiffe_id`). `PeerReader` turns that into a `Peer` once per call,
with the parsed result of each distinct ID cached, so the hot path is a dict
lookup.

A `Peer` is one of:

- authenticated: TLS and an agent SPIFFE ID of this mesh's trust domain; its
  URI is the RBAC principal, its agent name the `source_agent` of metrics,
  traces and the access log;
- unauthenticated: plaintext (permissive mode only); source `unknown`,
  RBAC principal none, so only rules open to any caller let it through;
- refused: TLS with a certificate that verifies but names no agent of this
  trust domain (another trust domain under a shared root, no or a malformed
  SPIFFE ID). The chain refuses such a call with UNAUTHENTICATED whatever
  the access policy says.

Identity headers a caller sends (`x-agentmesh-source-agent`, ...) are claims:
nothing here reads them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final, Protocol

from agentmesh.identity.spiffe import InvalidSpiffeId, SpiffeId

UNKNOWN_SOURCE: Final = "unknown"
UNAUTHENTICATED: Final = "unauthenticated"
# Distinct peer IDs whose parse is remembered; beyond this the cache starts over (IDs are few: one per agent).
MAX_CACHED_PEERS = 1024

_SSL = b"ssl"


class AuthContextHolder(Protocol):
    """What PeerReader needs of a grpc.aio.ServicerContext."""

    def auth_context(self) -> Mapping[str, Iterable[bytes]]: ...


@dataclass(frozen=True, slots=True)
class Peer:
    """The caller as the transport proved it."""

    # The certificate's agent SPIFFE ID; None for plaintext and refused peers.
    spiffe_id: SpiffeId | None = None
    tls: bool = False
    # Why a TLS peer cannot be trusted; None when it can (or the call is plaintext).
    refusal: str | None = None
    # Precomputed for the hot path: the RBAC principal, the metric/log source and the log identity.
    principal: str | None = None
    source: str = UNKNOWN_SOURCE
    identity: str = UNAUTHENTICATED

    @classmethod
    def authenticated(cls, spiffe_id: SpiffeId) -> Peer:
        return cls(spiffe_id, tls=True, principal=spiffe_id.uri, source=spiffe_id.agent, identity=spiffe_id.uri)

    @classmethod
    def refused(cls, reason: str, presented: str = "") -> Peer:
        return cls(tls=True, refusal=reason, identity=presented or UNAUTHENTICATED)


# A call without TLS: nobody in particular.
PLAINTEXT: Final = Peer()


class PeerReader:
    """Reads the caller's Peer from a call's auth context; built once, with the mesh's trust domain.

    `trust_domain` None accepts an agent ID of any trust domain the handshake
    let through (the trust bundle alone decides).
    """

    __slots__ = ("_cache", "_trust_domain")

    def __init__(self, trust_domain: str | None = None) -> None:
        self._trust_domain = trust_domain
        self._cache: dict[bytes, Peer] = {}

    def __repr__(self) -> str:
        return f"PeerReader(trust_domain={self._trust_domain!r})"

    @property
    def trust_domain(self) -> str | None:
        return self._trust_domain

    def set_trust_domain(self, trust_domain: str) -> None:
        """Called when the sidecar learns its own identity; peers parsed before are parsed again."""
        if trust_domain != self._trust_domain:
            self._trust_domain = trust_domain
            self._cache = {}

    def read(self, context: AuthContextHolder) -> Peer:
        """The caller of the call `context` belongs to."""
        auth = context.auth_context()
        security = auth.get("transport_security_type")
        if security is None or _SSL not in security:
            return PLAINTEXT
        ids = auth.get("peer_spiffe_id")
        raw = next(iter(ids), b"") if ids is not None else b""
        peer = self._cache.get(raw)
        if peer is None:
            peer = self._parse(raw)
            if len(self._cache) >= MAX_CACHED_PEERS:
                self._cache.clear()
            self._cache[raw] = peer
        return peer

    def _parse(self, raw: bytes) -> Peer:
        if not raw:
            return Peer.refused("the certificate carries no SPIFFE ID (a single spiffe:// URI SAN)")
        uri = raw.decode("utf-8", "replace")
        try:
            spiffe_id = SpiffeId.parse(uri)
        except InvalidSpiffeId as exc:
            return Peer.refused(str(exc), uri)
        if self._trust_domain is not None and spiffe_id.trust_domain != self._trust_domain:
            reason = f"{uri} belongs to trust domain {spiffe_id.trust_domain!r}, not this mesh's {self._trust_domain!r}"
            return Peer.refused(reason, uri)
        return Peer.authenticated(spiffe_id)
