from __future__ import annotations

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from google.protobuf import any_pb2

from control_plane.xds.snapshot import (
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    LISTENER_TYPE,
    PUSH_ORDER,
    ROUTE_TYPE,
    InconsistentSnapshotError,
    Snapshot,
    iter_resources,
    type_label,
)
from tests.unit.control_plane.xds.resources import (
    agent_snapshot,
    api_listener,
    assignment,
    cluster,
    pack,
    route_configuration,
    socket_listener,
)


def test_resources_are_filed_by_type_and_name_in_order():
    snapshot = agent_snapshot("v1", endpoints={"v1": [7001], "v2": [7002]})

    assert snapshot.version == "v1"
    assert list(snapshot.resources(CLUSTER_TYPE)) == ["agent/researcher/v1", "agent/researcher/v2"]
    assert list(snapshot.resources(ENDPOINT_TYPE)) == ["agent/researcher/v1", "agent/researcher/v2"]
    assert list(snapshot.resources(LISTENER_TYPE)) == ["researcher"]
    assert list(snapshot.resources(ROUTE_TYPE)) == ["researcher"]
    packed = snapshot.resources(CLUSTER_TYPE)["agent/researcher/v1"]
    assert isinstance(packed, any_pb2.Any)
    assert packed.type_url == CLUSTER_TYPE
    assert snapshot.unpack(CLUSTER_TYPE, "agent/researcher/v1").name == "agent/researcher/v1"
    assert snapshot.consistency_errors() == []
    assert "cds=2" in repr(snapshot)


def test_constructor_accepts_messages_and_anys_under_their_own_names():
    by_message = Snapshot("1", {CLUSTER_TYPE: {"a": cluster("a")}})
    by_any = Snapshot("1", {CLUSTER_TYPE: {"a": pack(cluster("a"))}})

    assert by_message.digest(CLUSTER_TYPE) == by_any.digest(CLUSTER_TYPE)
    with pytest.raises(ValueError, match="named 'a' but filed under 'b'"):
        Snapshot("1", {CLUSTER_TYPE: {"b": cluster("a")}})
    with pytest.raises(ValueError, match="cannot be served as"):
        Snapshot("1", {ROUTE_TYPE: {"a": pack(cluster("a"))}})
    with pytest.raises(ValueError, match="cannot be served as"):
        Snapshot("1", {ROUTE_TYPE: {"a": cluster("a")}})
    with pytest.raises(ValueError, match="unsupported resource type"):
        Snapshot("1", {"type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret": {}})
    with pytest.raises(ValueError, match="non-empty version"):
        Snapshot("", {})


def test_undecodable_any_is_rejected():
    garbage = any_pb2.Any(type_url=CLUSTER_TYPE, value=b"\xff\xff\xff")
    with pytest.raises(ValueError, match="undecodable"):
        Snapshot("1", {CLUSTER_TYPE: {"a": garbage}})


def test_from_resources_rejects_duplicates_and_unserved_types():
    with pytest.raises(ValueError, match="duplicate"):
        Snapshot.from_resources("1", [cluster("a"), cluster("a")])
    with pytest.raises(ValueError, match="unsupported resource type"):
        Snapshot.from_resources("1", [hcm_pb2.HttpConnectionManager()])


def test_digest_depends_on_content_not_on_version_or_order():
    one = Snapshot.from_resources("1", [cluster("a"), cluster("b")])
    reordered = Snapshot.from_resources("2", [cluster("b"), cluster("a")])
    changed = Snapshot.from_resources("3", [cluster("a"), cluster("b", http2=True)])

    assert one.digest(CLUSTER_TYPE) == reordered.digest(CLUSTER_TYPE)
    assert one.digest(CLUSTER_TYPE) != changed.digest(CLUSTER_TYPE)
    assert one.resource_digests(CLUSTER_TYPE)["a"] == changed.resource_digests(CLUSTER_TYPE)["a"]
    assert one.digest(ROUTE_TYPE) == Snapshot("9").digest(ROUTE_TYPE)


def test_missing_route_cluster_is_reported():
    snapshot = Snapshot.from_resources(
        "1",
        [
            api_listener("researcher"),
            route_configuration("researcher", {"agent/researcher/v1": 90, "agent/researcher/v2": 10}),
            cluster("agent/researcher/v1"),
            assignment("agent/researcher/v1", [7001]),
        ],
    )

    problems = snapshot.consistency_errors()

    assert len(problems) == 1
    assert "route configuration 'researcher'" in problems[0]
    assert "cluster 'agent/researcher/v2' is not in the snapshot" in problems[0]
    with pytest.raises(InconsistentSnapshotError) as caught:
        snapshot.check_consistent()
    assert caught.value.problems == problems


def test_single_cluster_route_and_mirror_are_checked():
    route = route_configuration("r", {"missing": 1})
    route.virtual_hosts[0].routes[0].route.request_mirror_policies.add(cluster="shadow")
    snapshot = Snapshot.from_resources("1", [route])

    problems = snapshot.consistency_errors()

    assert any("cluster 'missing'" in p for p in problems)
    assert any("mirror: cluster 'shadow'" in p for p in problems)


def test_eds_cluster_without_assignment_is_reported_by_service_name():
    named = cluster("agent/a/v1")
    named.eds_cluster_config.service_name = "a-v1-endpoints"
    static = cluster_pb2.Cluster(name="static", type=cluster_pb2.Cluster.STATIC)
    snapshot = Snapshot.from_resources("1", [named, static, assignment("agent/a/v1", [1])])

    assert snapshot.consistency_errors() == [
        "cluster 'agent/a/v1': EDS assignment 'a-v1-endpoints' is not in the snapshot"
    ]


def test_listener_rds_names_are_checked_for_api_and_socket_listeners():
    snapshot = Snapshot.from_resources("1", [api_listener("proxyless", "r1"), socket_listener("gateway", 8080, "r2")])

    problems = snapshot.consistency_errors()

    assert len(problems) == 2
    assert "listener 'proxyless' api_listener: route configuration 'r1'" in problems[0]
    assert "listener 'gateway' filter chain 0" in problems[1]
    assert "route configuration 'r2' is not in the snapshot" in problems[1]


def test_inline_route_configuration_and_tcp_proxy_clusters_are_checked():
    hcm = hcm_pb2.HttpConnectionManager(stat_prefix="x", route_config=route_configuration("inline", {"gone": 1}))
    inline = listener_pb2.Listener(name="inline")
    inline.default_filter_chain.filters.add(name="hcm", typed_config=pack(hcm))
    tcp = listener_pb2.Listener(name="tcp")
    tcp.filter_chains.add().filters.add(name="tcp", typed_config=pack(tcp_proxy_pb2.TcpProxy(cluster="db")))
    weighted = tcp_proxy_pb2.TcpProxy(stat_prefix="w")
    weighted.weighted_clusters.clusters.add(name="db2", weight=1)
    tcp.filter_chains.add().filters.add(name="tcp2", typed_config=pack(weighted))
    snapshot = Snapshot.from_resources("1", [inline, tcp])

    problems = snapshot.consistency_errors()

    assert len(problems) == 3
    assert "inline route configuration" in problems[0] and "'gone'" in problems[0]
    assert "'db'" in problems[1]
    assert "'db2'" in problems[2]


def test_undecodable_filter_config_is_a_problem_not_a_crash():
    listener = listener_pb2.Listener(name="broken")
    bad = any_pb2.Any(
        type_url="type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        value=b"\xff\xff",
    )
    listener.api_listener.api_listener.CopyFrom(bad)
    snapshot = Snapshot.from_resources("1", [listener])

    assert len(snapshot.consistency_errors()) == 1
    assert "cannot decode" in snapshot.consistency_errors()[0]


def test_routes_without_route_action_are_skipped():
    route = route_configuration("r", {"c": 1})
    route.virtual_hosts[0].routes.add(
        match=route_components_pb2.RouteMatch(prefix="/x"),
        direct_response=route_components_pb2.DirectResponseAction(status=404),
    )
    snapshot = Snapshot.from_resources("1", [route, cluster("c"), assignment("c", [1])])

    assert snapshot.consistency_errors() == []


def test_iter_resources_follows_push_order_and_labels_are_short():
    snapshot = agent_snapshot("v1", endpoints={"v1": [7001]})

    types = [type_url for type_url, _, _ in iter_resources(snapshot)]

    assert types == [CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE]
    assert PUSH_ORDER.index(CLUSTER_TYPE) < PUSH_ORDER.index(LISTENER_TYPE)
    assert [type_label(t) for t in PUSH_ORDER] == ["cds", "eds", "lds", "rds"]
    assert type_label("type.googleapis.com/other.Thing") == "other"
