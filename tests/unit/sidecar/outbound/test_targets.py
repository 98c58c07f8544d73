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
