"""TargetDirectory: which identity the sidecar at each endpoint address must prove, from the xDS snapshot."""

from __future__ import annotations

from types import MappingProxyType

import pytest

from agentmesh.identity.spiffe import SpiffeId
from sidecar.config.snapshot import Cluster, ClusterEndpoints, Endpoint, MeshSnapshot, UpstreamTls
from sidecar.errors import NoRoute
from sidecar.outbound.targets import TargetDirectory

RESEARCHER = SpiffeId("agentmesh.local", "research", "researcher")
WRITER = SpiffeId("agentmesh.local", "content", "writer")


def _snapshot(*clusters: tuple[str, UpstreamTls | None, tuple[str, ...]]) -> MeshSnapshot:
    return MeshSnapshot(
        clusters=MappingProxyType({name: Cluster(name, tls=tls) for name, tls, _ in clusters}),
        endpoints=MappingProxyType(
            {
                name: ClusterEndpoints(name, tuple(Endpoint(a, healthy=True) for a in addresses))
                for name, _, addresses in clusters
            }
        ),
    )


def test_addresses_expect_the_identity_of_their_cluster_or_plaintext() -> None:
    directory = TargetDirectory((), channel_options=[])
    directory.expect(
        _snapshot(
            ("agent/researcher/v1", UpstreamTls((RESEARCHER,)), ("10.0.0.1:15006",)),
            ("agent/writer/v1", None, ("10.0.0.2:15006",)),
            # A service over both: its several identities are resolved by the agent clusters.
            ("service/x.v1.S", UpstreamTls((RESEARCHER, WRITER)), ("10.0.0.1:15006", "10.0.0.3:15006")),
        )
    )
    assert directory.expected_identity("10.0.0.1:15006") == RESEARCHER
    assert directory.expected_identity("10.0.0.2:15006") is None
    assert directory.expected_identity("10.0.0.9:15006") is None
    with pytest.raises(NoRoute, match=r"cannot tell which identity the sidecar at 10\.0\.0\.3:15006 must prove"):
        directory.expected_identity("10.0.0.3:15006")


def test_a_new_snapshot_replaces_what_was_expected() -> None:
    directory = TargetDirectory((), channel_options=[])
    directory.expect(_snapshot(("agent/researcher/v1", UpstreamTls((RESEARCHER,)), ("10.0.0.1:15006",))))
    directory.expect(_snapshot(("agent/researcher/v1", None, ("10.0.0.1:15006",))))
    assert directory.expected_identity("10.0.0.1:15006") is None


class _Channel:
    """Counts the call objects made (a grpc.aio channel makes one per unary_unary/unary_stream)."""

    def __init__(self) -> None:
        self.made: list[tuple[str, str]] = []

    def unary_unary(self, path: str, **_: object) -> object:
        self.made.append(("unary", path))
        return object()

    def unary_stream(self, path: str, **_: object) -> object:
        self.made.append(("stream", path))
        return object()


def test_a_pooled_channel_makes_each_call_object_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from sidecar.outbound import targets

    monkeypatch.setattr(targets, "MAX_CALLABLES_PER_CHANNEL", 2)
    channel = _Channel()
    pooled = targets.PooledChannel(("127.0.0.1:1", None, 0), channel)  # type: ignore[arg-type]
    assert pooled.unary("/p.S/A") is pooled.unary("/p.S/A")
    assert pooled.stream("/p.S/A") is pooled.stream("/p.S/A")
    assert channel.made == [("unary", "/p.S/A"), ("stream", "/p.S/A")]
    for path in ("/p.S/B", "/p.S/C", "/p.S/C"):
        pooled.unary(path)
    assert len(pooled.unary_calls) == 2  # bounded: paths come from the agent
    assert channel.made.count(("unary", "/p.S/C")) == 2
