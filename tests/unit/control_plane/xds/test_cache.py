from __future__ import annotations

import functools

import pytest

from control_plane.xds.cache import SnapshotCache
from control_plane.xds.snapshot import (
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    LISTENER_TYPE,
    RESOURCE_TYPES,
    ROUTE_TYPE,
    InconsistentSnapshotError,
    Snapshot,
)
from tests.unit.control_plane.xds.resources import agent_snapshot, api_listener


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_node_falls_back_to_the_default_snapshot():
    cache = SnapshotCache()
    assert cache.get("node-a") is None
    assert cache.entry("node-a") is None

    default = agent_snapshot("d1", endpoints={"v1": [7001]})
    own = agent_snapshot("a1", endpoints={"v1": [7002]})
    cache.set_default(default)
    cache.set_snapshot("node-a", own)

    assert cache.get("node-a") is own
    assert cache.get("node-b") is default
    assert cache.default() is default
    assert cache.node_ids() == ["node-a"]

    cache.clear_snapshot("node-a")
    assert cache.get("node-a") is default
    assert cache.node_ids() == []


def test_a_type_keeps_its_version_until_its_resources_change():
    clock = FakeClock()
    cache = SnapshotCache(clock=clock)
    first = cache.set_snapshot("n", agent_snapshot("1", endpoints={"v1": [7001]}))
    assert {first.version(t) for t in RESOURCE_TYPES} == {"1"}

    clock.now = 105.0
    second = cache.set_snapshot("n", agent_snapshot("2", endpoints={"v1": [7001, 7003]}))

    assert second.version(ENDPOINT_TYPE) == "2"
    assert second.published_at[ENDPOINT_TYPE] == 105.0
    for unchanged in (CLUSTER_TYPE, LISTENER_TYPE, ROUTE_TYPE):
        assert second.version(unchanged) == "1"
        assert second.published_at[unchanged] == 100.0

    clock.now = 110.0
    third = cache.set_snapshot("n", agent_snapshot("3", endpoints={"v1": [7001, 7003], "v2": [7004]}))
    assert third.version(LISTENER_TYPE) == "1"
    assert third.version(ROUTE_TYPE) == "3"
    assert third.version(CLUSTER_TYPE) == "3"


def test_inconsistent_snapshots_are_refused_and_change_nothing():
    cache = SnapshotCache()
    good = agent_snapshot("1", endpoints={"v1": [7001]})
    cache.set_default(good)
    calls: list[str] = []
    cache.watch("n", lambda: calls.append("n"))
    dangling = Snapshot.from_resources("2", [api_listener("researcher", "nowhere")])

    with pytest.raises(InconsistentSnapshotError, match="nowhere"):
        cache.set_snapshot("n", dangling)
    with pytest.raises(InconsistentSnapshotError):
        cache.set_default(dangling)

    assert cache.get("n") is good
    assert calls == []


def test_watches_fire_for_their_node_and_for_default_changes_they_inherit():
    cache = SnapshotCache()
    calls: list[str] = []
    cache.watch("a", lambda: calls.append("a"))
    watch_b = cache.watch("b", lambda: calls.append("b"))
    assert cache.watch_count() == 2

    cache.set_snapshot("a", agent_snapshot("1", endpoints={"v1": [1]}))
    assert calls == ["a"]

    cache.set_default(agent_snapshot("d", endpoints={"v1": [2]}))
    assert calls == ["a", "b"]  # "a" has its own snapshot, so the default does not concern it

    cache.clear_snapshot("a")
    assert calls == ["a", "b", "a"]
    cache.clear_snapshot("a")  # nothing to clear: no notification
    assert calls == ["a", "b", "a"]

    watch_b.cancel()
    watch_b.cancel()
    cache.set_default(agent_snapshot("d2", endpoints={"v1": [3]}))
    assert calls == ["a", "b", "a", "a"]
    assert cache.watch_count("b") == 0


def test_a_failing_watch_callback_does_not_stop_the_others(caplog: pytest.LogCaptureFixture):
    cache = SnapshotCache()
    calls: list[str] = []

    def broken() -> None:
        raise RuntimeError("boom")

    cache.watch("n", broken)
    cache.watch("n", lambda: calls.append("ok"))

    cache.set_snapshot("n", agent_snapshot("1", endpoints={"v1": [1]}))

    assert calls == ["ok"]
    assert "watch callback failed" in caplog.text


def test_a_node_gets_its_own_snapshot_else_its_longest_group_else_the_default():
    cache = SnapshotCache()
    default = agent_snapshot("d", endpoints={"v1": [7001]})
    gateways = agent_snapshot("g", endpoints={"v1": [7002]})
    edge = agent_snapshot("e", endpoints={"v1": [7003]})
    own = agent_snapshot("o", endpoints={"v1": [7004]})
    cache.set_default(default)
    cache.set_group("gateway~", gateways)
    cache.set_group("gateway~edge", edge)
    cache.set_snapshot("gateway~edge-1", own)

    assert cache.get("sidecar-1") is default
    assert cache.get("gateway~inner-1") is gateways
    assert cache.get("gateway~edge-2") is edge
    assert cache.get("gateway~edge-1") is own
    assert cache.get("xgateway~inner-1") is default  # a prefix, not a substring
    assert cache.group("gateway~") is gateways
    assert cache.group("nope~") is None
    assert cache.groups() == ["gateway~", "gateway~edge"]
    assert cache.node_ids() == ["gateway~edge-1"]

    cache.clear_snapshot("gateway~edge-1")
    assert cache.get("gateway~edge-1") is edge
    cache.clear_group("gateway~edge")
    assert cache.get("gateway~edge-1") is gateways
    cache.clear_group("gateway~")
    cache.clear_group("gateway~")  # nothing to clear
    assert cache.get("gateway~edge-1") is default


def test_a_group_without_a_default_serves_only_its_nodes():
    cache = SnapshotCache()
    gateways = agent_snapshot("g", endpoints={"v1": [7002]})
    cache.set_group("gateway~", gateways)
    assert cache.get("gateway~a") is gateways
    assert cache.entry("sidecar-1") is None
    assert cache.default() is None


def test_a_group_keeps_per_type_versions_of_its_own():
    clock = FakeClock()
    cache = SnapshotCache(clock=clock)
    cache.set_default(agent_snapshot("1", endpoints={"v1": [7001]}))
    first = cache.set_group("gateway~", agent_snapshot("1", endpoints={"v1": [7001]}))
    assert {first.version(t) for t in RESOURCE_TYPES} == {"1"}

    clock.now = 105.0
    cache.set_default(agent_snapshot("2", endpoints={"v1": [7001, 7005]}))  # the default's change is not the group's
    second = cache.set_group("gateway~", agent_snapshot("2", endpoints={"v1": [7001]}))
    assert {second.version(t) for t in RESOURCE_TYPES} == {"1"}
    assert cache.entry("gateway~a") is second
    assert cache.entry("sidecar").version(ENDPOINT_TYPE) == "2"  # type: ignore[union-attr]

    third = cache.set_group("gateway~", agent_snapshot("3", endpoints={"v1": [7001, 7003]}))
    assert third.version(ENDPOINT_TYPE) == "3"
    assert third.published_at[ENDPOINT_TYPE] == 105.0
    assert third.version(LISTENER_TYPE) == "1"
    assert third.published_at[LISTENER_TYPE] == 100.0


def test_group_watches_fire_for_the_nodes_that_group_serves():
    cache = SnapshotCache()
    calls: list[str] = []
    for node in ("sidecar", "gateway~a", "gateway~edge-1", "gateway~own"):
        cache.watch(node, functools.partial(calls.append, node))
    cache.set_snapshot("gateway~own", agent_snapshot("o", endpoints={"v1": [1]}))
    calls.clear()

    cache.set_group("gateway~", agent_snapshot("g1", endpoints={"v1": [2]}))
    assert sorted(calls) == ["gateway~a", "gateway~edge-1"]  # not the sidecar, not the node with its own
    calls.clear()

    cache.set_group("gateway~edge", agent_snapshot("e1", endpoints={"v1": [3]}))
    assert calls == ["gateway~edge-1"]  # it moves to the longer group
    calls.clear()

    cache.set_group("gateway~", agent_snapshot("g2", endpoints={"v1": [4]}))
    assert calls == ["gateway~a"]
    calls.clear()

    cache.set_default(agent_snapshot("d", endpoints={"v1": [5]}))
    assert calls == ["sidecar"]  # grouped nodes do not hear about the default
    calls.clear()

    cache.clear_group("gateway~edge")
    assert calls == ["gateway~edge-1"]  # back to "gateway~"
    calls.clear()
    cache.clear_snapshot("gateway~own")
    assert calls == ["gateway~own"]
    assert cache.get("gateway~own") is cache.group("gateway~")


def test_inconsistent_or_unnamed_groups_are_refused_and_change_nothing():
    cache = SnapshotCache()
    good = agent_snapshot("1", endpoints={"v1": [7001]})
    cache.set_group("gateway~", good)
    calls: list[str] = []
    cache.watch("gateway~a", lambda: calls.append("a"))

    with pytest.raises(InconsistentSnapshotError, match="nowhere"):
        cache.set_group("gateway~", Snapshot.from_resources("2", [api_listener("researcher", "nowhere")]))
    with pytest.raises(ValueError, match="prefix"):
        cache.set_group("", good)

    assert cache.get("gateway~a") is good
    assert cache.groups() == ["gateway~"]
    assert calls == []
