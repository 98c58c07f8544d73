"""The ADS protocol against a real grpc.aio server on loopback, driven by a raw ADS client."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from prometheus_client import CollectorRegistry

from control_plane.xds.ack_tracker import AckTracker, SyncStatus
from control_plane.xds.ads_server import AggregatedDiscoveryService
from control_plane.xds.cache import SnapshotCache
from control_plane.xds.server import serve_xds
from control_plane.xds.snapshot import CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE, Snapshot
from tests.unit.control_plane.xds.ads_client import ALL_TYPES, AdsClient, names
from tests.unit.control_plane.xds.resources import agent_snapshot, assignment, cluster

UNKNOWN_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"


@dataclass
class Harness:
    cache: SnapshotCache
    tracker: AckTracker
    service: AggregatedDiscoveryService
    registry: CollectorRegistry
    port: int
    connect: Callable[[str], AdsClient]

    def metric(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0


@pytest.fixture
async def xds() -> AsyncIterator[Harness]:
    cache, tracker, registry = SnapshotCache(), AckTracker(), CollectorRegistry()
    service = AggregatedDiscoveryService(cache, tracker, registry=registry)
    server, port = await serve_xds(cache, tracker, address="127.0.0.1:0", service=service)
    clients: list[AdsClient] = []

    def connect(node_id: str) -> AdsClient:
        client = AdsClient(port, node_id)
        clients.append(client)
        return client

    yield Harness(cache, tracker, service, registry, port, connect)
    for client in clients:
        await client.close()
    await server.stop(None)


async def eventually(check: Callable[[], bool], what: str, timeout: float = 5) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def snapshot_v(version: str, *ports: int) -> Snapshot:
    return agent_snapshot(version, endpoints={"v1": list(ports) or [7001]})


async def synced(xds: Harness, client: AdsClient, count: int = 4) -> dict[str, Any]:
    """Reads `count` responses and ACKs each, until the tracker has every ACK; returns them by type URL."""
    responses = {}
    for _ in range(count):
        response = await client.recv()
        await client.ack(response)
        responses[response.type_url] = response
    node_id = client.node.id
    await eventually(
        lambda: all(xds.tracker.status(node_id, t) is SyncStatus.SYNCED for t in responses), f"{node_id} SYNCED"
    )
    return responses


async def test_initial_requests_are_answered_per_type_and_acks_sync(xds: Harness):
    xds.cache.set_default(snapshot_v("1"))
    client = xds.connect("planner-1")

    await client.subscribe_all()
    responses = await synced(xds, client)

    assert set(responses) == set(ALL_TYPES)
    assert {r.version_info for r in responses.values()} == {"1"}
    assert len({r.nonce for r in responses.values()}) == 4
    assert names(responses[LISTENER_TYPE]) == ["researcher"]
    assert names(responses[CLUSTER_TYPE]) == ["agent/researcher/v1"]
    assert names(responses[ENDPOINT_TYPE]) == ["agent/researcher/v1"]
    assert responses[CLUSTER_TYPE].control_plane.identifier == "agentmesh-control-plane"
    await eventually(
        lambda: all(xds.tracker.status("planner-1", t) is SyncStatus.SYNCED for t in ALL_TYPES), "all types SYNCED"
    )
    assert xds.metric("agentmesh_cp_push_duration_seconds_count", type="cds") == 1
    assert xds.metric("agentmesh_cp_push_duration_seconds_count", type="rds") == 1


async def test_changes_go_out_clusters_and_endpoints_first_and_only_for_changed_types(xds: Harness):
    xds.cache.set_snapshot("n", snapshot_v("1"))
    client = xds.connect("n")
    await client.subscribe_all()
    await synced(xds, client)

    xds.cache.set_snapshot("n", agent_snapshot("2", agent="writer", endpoints={"v1": [7001], "v2": [7002]}))
    pushed = await synced(xds, client)
    assert list(pushed) == [CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE]
    assert {r.version_info for r in pushed.values()} == {"2"}

    # Only endpoints change: the next response is EDS, and then (after a cluster change) CDS,
    # so nothing else was pushed in between.
    xds.cache.set_snapshot("n", agent_snapshot("3", agent="writer", endpoints={"v1": [7001, 7003], "v2": [7002]}))
    first = await client.recv()
    assert (first.type_url, first.version_info) == (ENDPOINT_TYPE, "3")
    await client.ack(first)
    with_new_cluster = agent_snapshot("4", agent="writer", endpoints={"v1": [7001, 7003], "v2": [7002], "v3": [7004]})
    xds.cache.set_snapshot("n", with_new_cluster)
    second = await client.recv()
    assert (second.type_url, second.version_info) == (CLUSTER_TYPE, "4")


async def test_nack_is_recorded_counted_and_not_resent(xds: Harness):
    xds.cache.set_snapshot("n", snapshot_v("1"))
    client = xds.connect("n")
    await client.subscribe_all()
    await synced(xds, client)

    xds.cache.set_snapshot("n", agent_snapshot("2", endpoints={"v1": [7001]}, weights={"v1": 1}, regex="(bad"))
    route = await client.recv()
    assert route.type_url == ROUTE_TYPE
    await client.nack(route, "invalid regex", accepted_version="1")
    await eventually(lambda: xds.tracker.status("n", ROUTE_TYPE) is SyncStatus.NACKED, "RDS NACKED")

    state = xds.tracker.state("n", ROUTE_TYPE)
    assert state.acked_version == "1"
    assert state.last_nack is not None
    assert (state.last_nack.version, state.last_nack.message) == ("2", "invalid regex")
    assert xds.metric("agentmesh_cp_nacks_total", type="rds") == 1

    # The next thing this node hears about is the next change, not the rejected routes again.
    xds.cache.set_snapshot("n", agent_snapshot("3", endpoints={"v1": [7001, 7009]}, weights={"v1": 1}, regex="(bad"))
    following = await client.recv()
    assert (following.type_url, following.version_info) == (ENDPOINT_TYPE, "3")


async def test_stale_nonces_are_ignored(xds: Harness):
    xds.cache.set_snapshot("n", snapshot_v("1"))
    client = xds.connect("n")
    await client.send(CLUSTER_TYPE)
    response = await client.recv()

    await client.send(CLUSTER_TYPE, nonce="garbage", version="1")
    await client.send(CLUSTER_TYPE, nonce="garbage", error="ignored")
    await client.ack(response)
    await eventually(lambda: xds.tracker.status("n", CLUSTER_TYPE) is SyncStatus.SYNCED, "CDS SYNCED")

    assert xds.metric("agentmesh_cp_ignored_requests_total", reason="stale_nonce") == 2
    assert xds.metric("agentmesh_cp_nacks_total", type="cds") == 0
    assert xds.tracker.state("n", CLUSTER_TYPE).last_nack is None


async def test_a_nonce_for_a_type_never_sent_on_this_stream_is_a_subscription(xds: Harness):
    xds.cache.set_snapshot("n", snapshot_v("1"))
    client = xds.connect("n")

    await client.send(CLUSTER_TYPE, nonce="from-a-previous-server", version="0")
    response = await client.recv()

    assert (response.type_url, response.version_info) == (CLUSTER_TYPE, "1")


async def test_named_subscriptions_get_only_their_resources(xds: Harness):
    def endpoints(version: str, **ports: list[int]) -> Snapshot:
        resources: list[Any] = []
        for name, p in ports.items():
            resources += [cluster(name), assignment(name, p)]
        return Snapshot.from_resources(version, resources)

    xds.cache.set_snapshot("n", endpoints("1", a=[1], b=[2], c=[3]))
    client = xds.connect("n")

    await client.send(ENDPOINT_TYPE, names=["a"])
    first = await client.recv()
    assert names(first) == ["a"]

    await client.send(ENDPOINT_TYPE, names=["a", "b"], nonce=first.nonce, version=first.version_info)
    second = await client.recv()
    assert sorted(names(second)) == ["a", "b"]
    await client.ack(second)

    # "c" changes: not subscribed, nothing sent. Then "a" changes: that is the next response.
    xds.cache.set_snapshot("n", endpoints("2", a=[1], b=[2], c=[4]))
    xds.cache.set_snapshot("n", endpoints("3", a=[5], b=[2], c=[4]))
    third = await client.recv()
    assert third.version_info == "3"
    assert sorted(names(third)) == ["a", "b"]

    # A name the snapshot lacks is simply absent; "*" asks for everything.
    await client.send(ENDPOINT_TYPE, names=["zzz"], nonce=third.nonce, version="3")
    assert names(await client.recv()) == []
    await client.send(ENDPOINT_TYPE, names=["*"], nonce="", version="3")
    assert sorted(names(await client.recv())) == ["a", "b", "c"]


async def test_unknown_types_get_an_empty_answer_and_the_stream_keeps_serving(xds: Harness):
    xds.cache.set_snapshot("n", snapshot_v("1"))
    client = xds.connect("n")

    await client.send(UNKNOWN_TYPE, names=["cert"])
    empty = await client.recv()
    await client.ack(empty)
    await client.send(CLUSTER_TYPE)
    clusters = await client.recv()

    assert (empty.type_url, list(empty.resources), empty.version_info) == (UNKNOWN_TYPE, [], "")
    assert clusters.type_url == CLUSTER_TYPE
    assert xds.metric("agentmesh_cp_ignored_requests_total", reason="unknown_type") == 1
    assert xds.tracker.status("n", UNKNOWN_TYPE) is SyncStatus.NOT_SENT


async def test_requests_without_type_url_are_ignored(xds: Harness):
    xds.cache.set_snapshot("n", snapshot_v("1"))
    client = xds.connect("n")

    await client.send("")
    await client.send(CLUSTER_TYPE)

    assert (await client.recv()).type_url == CLUSTER_TYPE
    assert xds.metric("agentmesh_cp_ignored_requests_total", reason="malformed") == 1


async def test_a_stream_without_node_id_is_refused(xds: Harness):
    client = xds.connect("")

    await client.send(CLUSTER_TYPE, with_node=False)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.recv()
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT


async def test_a_node_without_snapshot_is_served_once_one_is_published(xds: Harness):
    client = xds.connect("late")
    await client.send(CLUSTER_TYPE)
    await eventually(lambda: xds.cache.watch_count("late") == 1, "stream watching its node")

    xds.cache.set_default(snapshot_v("d1"))

    response = await client.recv()
    assert (response.type_url, response.version_info) == (CLUSTER_TYPE, "d1")


async def test_a_node_snapshot_is_pushed_only_to_that_node(xds: Harness):
    xds.cache.set_default(snapshot_v("d1"))
    a, b = xds.connect("a"), xds.connect("b")
    for client in (a, b):
        await client.send(ENDPOINT_TYPE)
        await client.ack(await client.recv())

    xds.cache.set_snapshot("a", snapshot_v("a2", 7001, 7002))
    xds.cache.set_default(snapshot_v("d3", 7001, 7003))

    assert (await a.recv()).version_info == "a2"
    assert (await b.recv()).version_info == "d3"


async def test_connected_nodes_are_listed_and_dropped_on_disconnect(xds: Harness):
    xds.cache.set_default(snapshot_v("1"))
    client = xds.connect("planner-1")
    await client.send(CLUSTER_TYPE)
    await client.ack(await client.recv())
    await eventually(lambda: xds.tracker.status("planner-1", CLUSTER_TYPE) is SyncStatus.SYNCED, "SYNCED")

    (node,) = xds.service.connected_nodes()
    assert (node.node_id, node.cluster, node.user_agent) == ("planner-1", "planner", "test-client 1.0")
    assert node.metadata == {"agent": "planner"}
    assert node.peer
    assert xds.metric("agentmesh_cp_connected_proxies") == 1

    await client.close()

    await eventually(lambda: not xds.service.connected_nodes(), "stream closed")
    assert xds.metric("agentmesh_cp_connected_proxies") == 0
    assert xds.tracker.node_ids() == []
    assert xds.cache.watch_count() == 0


async def test_half_close_ends_the_stream_cleanly(xds: Harness):
    xds.cache.set_default(snapshot_v("1"))
    client = xds.connect("n")
    await client.send(CLUSTER_TYPE)
    await client.recv()

    await client.call.done_writing()

    assert await client.call.code() is grpc.StatusCode.OK
    await eventually(lambda: not xds.service.connected_nodes(), "stream closed")


async def test_delta_xds_is_unimplemented(xds: Harness):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{xds.port}") as channel:
        call: Any = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).DeltaAggregatedResources()
        await call.write(discovery_pb2.DeltaDiscoveryRequest(type_url=CLUSTER_TYPE))

        assert await call.code() is grpc.StatusCode.UNIMPLEMENTED


async def test_serve_xds_refuses_a_service_for_another_cache():
    cache, tracker = SnapshotCache(), AckTracker()
    service = AggregatedDiscoveryService(SnapshotCache(), tracker)

    with pytest.raises(ValueError, match="must serve the cache and tracker"):
        await serve_xds(cache, tracker, address="127.0.0.1:0", service=service)
