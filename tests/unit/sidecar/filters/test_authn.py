"""Authentication: the caller's Peer from grpc's auth context, never from headers."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import pytest

from agentmesh.identity.spiffe import SpiffeId
from sidecar.filters.authn import MAX_CACHED_PEERS, PLAINTEXT, UNAUTHENTICATED, UNKNOWN_SOURCE, Peer, PeerReader

PLANNER = SpiffeId("agentmesh.local", "planning", "planner")


class FakeContext:
    """Answers auth_context() as grpc does: property name -> list of bytes values."""

    def __init__(self, auth: Mapping[str, list[bytes]]) -> None:
        self.auth = auth
        self.reads = 0

    def auth_context(self) -> Mapping[str, Iterable[bytes]]:
        self.reads += 1
        return self.auth


def tls(*spiffe_ids: bytes) -> FakeContext:
    auth: dict[str, list[bytes]] = {
        "transport_security_type": [b"ssl"],
        "security_level": [b"TSI_PRIVACY_AND_INTEGRITY"],
    }
    if spiffe_ids:
        auth["peer_spiffe_id"] = list(spiffe_ids)
    return FakeContext(auth)


def test_a_certificate_of_the_mesh_is_an_authenticated_peer() -> None:
    peer = PeerReader("agentmesh.local").read(tls(PLANNER.uri.encode()))
    assert peer == Peer.authenticated(PLANNER)
    assert (peer.tls, peer.refusal, peer.principal, peer.source, peer.identity) == (
        True,
        None,
        PLANNER.uri,
        "planner",
        PLANNER.uri,
    )


@pytest.mark.parametrize(
    "auth",
    [
        {"transport_security_type": [b"insecure"], "security_level": [b"TSI_SECURITY_NONE"]},
        {},
        # A plaintext call cannot smuggle an identity in: only a TLS handshake sets peer_spiffe_id.
        {"transport_security_type": [b"insecure"], "peer_spiffe_id": [PLANNER.uri.encode()]},
    ],
)
def test_plaintext_is_unauthenticated(auth: dict[str, list[bytes]]) -> None:
    peer = PeerReader("agentmesh.local").read(FakeContext(auth))
    assert peer is PLAINTEXT
    assert (peer.tls, peer.principal, peer.source, peer.identity) == (False, None, UNKNOWN_SOURCE, UNAUTHENTICATED)


@pytest.mark.parametrize(
    ("presented", "reason"),
    [
        (b"spiffe://other.mesh/team/planning/agent/planner", "belongs to trust domain 'other.mesh'"),
        (b"spiffe://agentmesh.local/ns/default/sa/planner", "is not an agent SPIFFE ID"),
        (b"https://planner.example", "is not a SPIFFE ID"),
        (b"spiffe://agentmesh.local/team/Planning/agent/planner", "not a valid team name"),
    ],
)
def test_a_certificate_naming_no_agent_of_this_mesh_is_refused(presented: bytes, reason: str) -> None:
    peer = PeerReader("agentmesh.local").read(tls(presented))
    assert peer.tls and peer.refusal is not None and reason in peer.refusal
    assert (peer.principal, peer.source, peer.identity) == (None, UNKNOWN_SOURCE, presented.decode())


def test_a_certificate_without_a_spiffe_id_is_refused() -> None:
    peer = PeerReader("agentmesh.local").read(tls())
    assert peer.refusal == "the certificate carries no SPIFFE ID (a single spiffe:// URI SAN)"
    assert peer.identity == UNAUTHENTICATED


def test_without_a_trust_domain_any_verified_agent_id_is_accepted() -> None:
    other = SpiffeId("other.mesh", "planning", "planner")
    reader = PeerReader()
    assert reader.trust_domain is None
    assert reader.read(tls(other.uri.encode())) == Peer.authenticated(other)


def test_parsed_peers_are_cached_and_the_cache_is_bounded() -> None:
    reader = PeerReader("agentmesh.local")
    context = tls(PLANNER.uri.encode())
    first = reader.read(context)
    assert reader.read(context) is first and context.reads == 2
    for index in range(MAX_CACHED_PEERS + 5):
        uri = SpiffeId("agentmesh.local", "t", f"agent-{index}").uri.encode()
        assert reader.read(tls(uri)).source == f"agent-{index}"
    assert len(reader._cache) <= MAX_CACHED_PEERS
    assert reader.read(context) == first


def test_learning_the_trust_domain_later_reparses_peers() -> None:
    other = SpiffeId("other.mesh", "planning", "planner")
    reader = PeerReader()
    assert reader.read(tls(other.uri.encode())).refusal is None
    reader.set_trust_domain("agentmesh.local")
    assert reader.read(tls(other.uri.encode())).refusal is not None
    assert reader.read(tls(PLANNER.uri.encode())) == Peer.authenticated(PLANNER)
