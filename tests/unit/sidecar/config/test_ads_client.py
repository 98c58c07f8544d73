"""AdsClient against the real ADS server (control_plane.xds) on loopback.

Snapshots are translations of examples/policies over the example mesh, so the
client sees the resources a real control plane sends.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.config.core.v3 import address_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf.message import Message

from control_plane.translate import AgentView, InstanceView, MeshView, translate
from control_plane.xds.ack_tracker import AckTracker, SyncStatus
from control_plane.xds.ads_server import AggregatedDiscoveryService
from control_plane.xds.cache import SnapshotCache
from control_plane.xds.server import serve_xds
from control_plane.xds.snapshot import Snapshot
from sidecar.config import persist
from sidecar.config.ads_client import AdsClient, NodeIdentity
from sidecar.config.decode import CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE, TYPE_URLS
from sidecar.config.snapshot import EMPTY_SNAPSHOT, InboundConfig, MeshSnapshot
from sidecar.stats import SidecarStats
from tests.unit.control_plane.translate.meshes import example_mesh, example_policies

NODE = NodeIdentity(agent="researcher", address="127.0.0.1:7001", version="v1", team="research", zone="a")
NODE_ID = "researcher~127.0.0.1:7001"
RDS_NACK = 'RouteConfiguration "agent/researcher": virtual_hosts[0].routes[3]: redirect is not supported'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def example_snapshot(version: str, mesh: MeshView | None = None) -> Snapshot:
    resources = translate(example_policies(), mesh or example_mesh())
    return Snapshot.from_resources(version, (message for _, _, message in resources))


def replaced(snapshot: Snapshot, version: str, *messages: Message) -> Snapshot:
    """`snapshot` under a new version, with `messages` replacing the resources of the same name."""
    resources: dict[tuple[str, str], Message] = {}
    for type_url in TYPE_URLS:
        for name in snapshot.resources(type_url):
            resources[(type_url, name)] = snapshot.unpack(type_url, name)
    for message in messages:
        type_url = "type.googleapis.com/" + message.DESCRIPTOR.full_name
        name = message.cluster_name if type_url == ENDPOINT_TYPE else message.name  # type: ignore[attr-defined]
        resources[(type_url, name)] = message
    return Snapshot.from_resources(version, resources.values())


def redirecting_routes(snapshot: Snapshot) -> route_pb2.RouteConfiguration:
    config: route_pb2.RouteConfiguration = snapshot.unpack(ROUTE_TYPE, "agent/researcher")
    config.virtual_hosts[0].routes[3].redirect.CopyFrom(rc.RedirectAction(path_redirect="/elsewhere"))
    return config


async def eventually(check: Callable[[], bool], what: str, timeout: float = 10) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


@dataclass
class ControlPlane:
    """An in-process ADS server that can be stopped and started again on the same port."""

    port: int
    cache: SnapshotCache = field(default_factory=SnapshotCache)
    tracker: AckTracker = field(default_factory=AckTracker)
    service: AggregatedDiscoveryService | None = None
    server: grpc.aio.Server | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.service = AggregatedDiscoveryService(self.cache, self.tracker)
        self.server, port = await serve_xds(self.cache, self.tracker, address=self.target, service=self.service)
        assert port == self.port

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(None)
            self.server = None

    def status(self, type_url: str) -> SyncStatus:
        return self.tracker.status(NODE_ID, type_url)

    def synced(self) -> bool:
        return all(self.status(t) is SyncStatus.SYNCED for t in TYPE_URLS)


@pytest.fixture
async def control_plane() -> AsyncIterator[ControlPlane]:
    cp = ControlPlane(free_port())
    await cp.start()
    yield cp
    await cp.stop()


@dataclass
class Sidecar:
    client: AdsClient
    stats: SidecarStats
    published: list[MeshSnapshot]
    task: asyncio.Task[None] | None = None

    def metric(self, name: str, **labels: str) -> float | None:
        return self.stats.registry.get_sample_value(name, labels)


@pytest.fixture
async def start_client() -> AsyncIterator[Callable[..., Sidecar]]:
    sidecars: list[Sidecar] = []

    def start(target: str, persist_path: Path | None = None, **options: object) -> Sidecar:
        stats = SidecarStats(agent="researcher", version="v1", team="research")
        published: list[MeshSnapshot] = []
        options = {
            "backoff_start": 0.05,
            "backoff_max": 0.2,
            "rng": random.Random(7),
            "on_snapshot": published.append,
            **options,
        }
        client = AdsClient(target=target, node=NODE, stats=stats, persist_path=persist_path, **options)  # type: ignore[arg-type]
        sidecar = Sidecar(client, stats, published, asyncio.ensure_future(client.run()))
        sidecars.append(sidecar)
        return sidecar

    yield start
    for sidecar in sidecars:
        assert sidecar.task is not None
        sidecar.task.cancel()
        await asyncio.gather(sidecar.task, return_exceptions=True)


async def test_initial_sync_of_all_four_types(
    control_plane: ControlPlane, start_client: Callable[..., Sidecar]
) -> None:
    control_plane.cache.set_default(example_snapshot("v1"))
    sidecar = start_client(control_plane.target)
    await eventually(control_plane.synced, "every type ACKed")
    await eventually(lambda: sidecar.client.source == "xds", "a published snapshot")

    # One publication, already complete: start-up waits for every type.
    assert len(sidecar.published) == 1
    current = sidecar.client.current
    assert current is sidecar.published[0]
    assert current.listeners["researcher"].route_config == "agent/researcher"
    assert current.route_table("research.v1.Researcher") is current.routes["service/research.v1.Researcher"]
    assert set(current.clusters) == set(control_plane.cache.default().resources(CLUSTER_TYPE))  # type: ignore[union-attr]
    assert set(current.endpoints) == set(current.clusters)
    assert isinstance(current.inbound, InboundConfig)
    assert len(current.inbound.rbac) == 2
    assert dict(current.versions) == dict.fromkeys(TYPE_URLS, "v1")

    assert sidecar.client.connected
    assert sidecar.metric("agentmesh_xds_connected") == 1
    assert sidecar.metric("agentmesh_xds_config_from_disk") == 0
    assert sidecar.client.last_update is not None
    described = sidecar.client.describe()
    assert described["source"] == "xds" and described["connected"] is True
    assert described["node"] == {"id": NODE_ID, "cluster": "researcher"}
    assert described["versions"] == {"cds": "v1", "eds": "v1", "lds": "v1", "rds": "v1"}
    assert "agent/researcher" in described["resources"]["rds"]
    assert described["subscriptions"]["rds"] == sorted(current.routes)
    assert described["last_nack"] is None
    json.dumps(described)

    assert control_plane.service is not None
    (node,) = control_plane.service.connected_nodes()
    assert (node.node_id, node.cluster) == (NODE_ID, "researcher")
    assert dict(node.metadata) == {"agent": "researcher", "version": "v1", "team": "research"}
    assert node.user_agent.startswith("agentmesh-sidecar ")


async def test_an_update_changes_the_published_snapshot(
    control_plane: ControlPlane, start_client: Callable[..., Sidecar]
) -> None:
    control_plane.cache.set_default(example_snapshot("v1"))
    sidecar = start_client(control_plane.target)
    await eventually(lambda: sidecar.client.source == "xds", "the first snapshot")
    first = sidecar.client.current

    # The writer leaves and the researcher v1 gets another instance.
    mesh = example_mesh()
    researcher = mesh.agents["researcher"]
    versions = dict(researcher.versions)
    versions["v1"] = (*versions["v1"], InstanceView("127.0.0.9:7001"))
    changed = AgentView(
        researcher.name,
        team=researcher.team,
        versions=versions,
        services=researcher.services,
        methods=researcher.methods,
        idempotent_methods=researcher.idempotent_methods,
    )
    control_plane.cache.set_default(example_snapshot("v2", MeshView.of(changed, mesh.agents["planner"])))
    await eventually(lambda: sidecar.client.current.versions.get(LISTENER_TYPE) == "v2", "the LDS update")
    await eventually(control_plane.synced, "v2 ACKed")
    await eventually(lambda: "agent/writer" not in sidecar.client.current.routes, "RDS pruned")

    current = sidecar.client.current
    assert current is sidecar.published[-1]
    assert "writer" not in current.listeners
    assert "agent/writer/v1" not in current.clusters and "agent/writer/v1" not in current.endpoints
    addresses = {e.address for e in current.endpoints["agent/researcher/v1"].endpoints}
    assert "127.0.0.9:7001" in addresses
    # Unchanged resources keep their decoded objects.
    assert current.routes["agent/planner"] is first.routes["agent/planner"]
    assert current.inbound is first.inbound
    # The route and assignment subscriptions follow the listeners and clusters.
    assert control_plane.tracker.state(NODE_ID, ROUTE_TYPE).acked_version == "v2"
    assert sidecar.client.describe()["subscriptions"]["eds"] == sorted(current.clusters)


async def test_a_rejected_update_is_nacked_and_the_previous_config_stays(
    control_plane: ControlPlane, start_client: Callable[..., Sidecar], caplog: pytest.LogCaptureFixture
) -> None:
    good = example_snapshot("v1")
    control_plane.cache.set_default(good)
    sidecar = start_client(control_plane.target)
    await eventually(control_plane.synced, "v1 ACKed")
    before = sidecar.client.current
    published = len(sidecar.published)

    with caplog.at_level(logging.WARNING, logger="agentmesh.sidecar.xds"):
        control_plane.cache.set_default(replaced(good, "v2", redirecting_routes(good)))
        await eventually(lambda: control_plane.status(ROUTE_TYPE) is SyncStatus.NACKED, "the RDS NACK")

    state = control_plane.tracker.state(NODE_ID, ROUTE_TYPE)
    assert state.last_nack is not None
    assert (state.last_nack.version, state.last_nack.code, state.last_nack.message) == ("v2", 3, RDS_NACK)
    assert state.acked_version == "v1"  # a NACK carries the version last accepted
    assert sidecar.client.current is before and len(sidecar.published) == published
    assert sidecar.metric("agentmesh_xds_rejected_total", type="rds") == 1
    assert sidecar.metric("agentmesh_xds_rejected_total", type="lds") == 0
    nack = sidecar.client.describe()["last_nack"]
    assert nack["type"] == "rds" and nack["version"] == "v2" and nack["message"] == RDS_NACK
    assert RDS_NACK in caplog.text

    # The next good version is accepted.
    control_plane.cache.set_default(replaced(good, "v3"))
    await eventually(lambda: control_plane.status(ROUTE_TYPE) is SyncStatus.SYNCED, "v3 ACKed")
    assert control_plane.tracker.state(NODE_ID, ROUTE_TYPE).acked_version == "v3"
    await eventually(lambda: sidecar.client.current.versions[ROUTE_TYPE] == "v3", "v3 published")


async def test_an_undecodable_assignment_is_nacked(
    control_plane: ControlPlane, start_client: Callable[..., Sidecar]
) -> None:
    good = example_snapshot("v1")
    control_plane.cache.set_default(good)
    sidecar = start_client(control_plane.target)
    await eventually(control_plane.synced, "v1 ACKed")
    assignment: endpoint_pb2.ClusterLoadAssignment = good.unpack(ENDPOINT_TYPE, "agent/planner/v1")
    assignment.endpoints[0].lb_endpoints[0].endpoint.address.CopyFrom(
        address_pb2.Address(socket_address=address_pb2.SocketAddress(address="planner.local", port_value=7003))
    )
    control_plane.cache.set_default(replaced(good, "v2", assignment))
    await eventually(lambda: control_plane.status(ENDPOINT_TYPE) is SyncStatus.NACKED, "the EDS NACK")
    nack = control_plane.tracker.state(NODE_ID, ENDPOINT_TYPE).last_nack
    assert nack is not None
    where = "endpoints[0].lb_endpoints[0].endpoint.address.socket_address.address"
    assert nack.message == f"ClusterLoadAssignment \"agent/planner/v1\": {where} 'planner.local' is not an IP address"
    assert sidecar.metric("agentmesh_xds_rejected_total", type="eds") == 1
    assert sidecar.client.current.endpoints["agent/planner/v1"].endpoints[0].address == "127.0.0.1:7003"


async def test_server_restart_reconnects_and_resyncs(
    control_plane: ControlPlane, start_client: Callable[..., Sidecar]
) -> None:
    control_plane.cache.set_default(example_snapshot("v1"))
    sidecar = start_client(control_plane.target)
    await eventually(control_plane.synced, "v1 ACKed")
    before = sidecar.client.current

    await control_plane.stop()
    await eventually(lambda: not sidecar.client.connected, "the stream noticed down")
    assert sidecar.metric("agentmesh_xds_connected") == 0
    assert sidecar.client.current is before and sidecar.client.source == "xds"  # the last good config stays

    # A new control plane process: fresh cache and tracker, a new version of the same content plus a change.
    control_plane.cache, control_plane.tracker = SnapshotCache(), AckTracker()
    mesh = example_mesh()
    control_plane.cache.set_default(
        example_snapshot("r2", MeshView.of(mesh.agents["researcher"], mesh.agents["planner"]))
    )
    await control_plane.start()
    await eventually(control_plane.synced, "resynced with the new server")
    await eventually(lambda: sidecar.client.current.versions.get(ROUTE_TYPE) == "r2", "the new version published")
    assert sidecar.client.connected and sidecar.metric("agentmesh_xds_connected") == 1
    assert "writer" not in sidecar.client.current.listeners
    assert sidecar.client.current.routes["agent/planner"] is before.routes["agent/planner"]


async def test_persists_and_starts_from_disk_when_the_control_plane_is_down(
    control_plane: ControlPlane, start_client: Callable[..., Sidecar], tmp_path: Path
) -> None:
    path = tmp_path / "xds.json"
    control_plane.cache.set_default(example_snapshot("v1"))
    first = start_client(control_plane.target, path)
    await eventually(control_plane.synced, "v1 ACKed")
    await eventually(path.exists, "the saved config")
    saved = persist.load(path, agent="researcher")
    assert saved == first.client.current
    assert first.task is not None
    first.task.cancel()
    await asyncio.gather(first.task, return_exceptions=True)
    await control_plane.stop()

    # The sidecar restarts while the control plane is still down.
    second = start_client(control_plane.target, path)
    await eventually(lambda: second.client.source == "disk", "the saved config in use")
    assert second.published == [second.client.current]
    assert second.client.current == saved
    assert second.metric("agentmesh_xds_config_from_disk") == 1
    assert second.client.describe()["source"] == "disk"
    assert not second.client.connected

    # The control plane comes back with a change: live config replaces the saved one.
    mesh = example_mesh()
    control_plane.cache.set_default(
        example_snapshot("v2", MeshView.of(mesh.agents["researcher"], mesh.agents["planner"]))
    )
    await control_plane.start()
    await eventually(lambda: second.client.source == "xds", "live config")
    assert second.client.current.versions[LISTENER_TYPE] == "v2"
    assert second.metric("agentmesh_xds_config_from_disk") == 0
    await eventually(lambda: json.loads(path.read_text())["types"][LISTENER_TYPE]["version"] == "v2", "v2 saved")


async def test_initial_fetch_timeout_falls_back_to_disk(
    control_plane: ControlPlane, start_client: Callable[..., Sidecar], tmp_path: Path
) -> None:
    path = tmp_path / "xds.json"
    persist.save(path, MeshSnapshot(versions={LISTENER_TYPE: "old"}), agent="researcher")
    # Connected, but the control plane has nothing for this node.
    sidecar = start_client(control_plane.target, path, initial_fetch_timeout=0.2)
    await eventually(lambda: sidecar.client.source == "disk", "the saved config after the timeout")
    assert sidecar.client.current.versions == {}  # raw types absent: nothing was saved for them
    control_plane.cache.set_default(example_snapshot("v1"))
    await eventually(lambda: sidecar.client.source == "xds", "live config")


class _ListenersOnly(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    """An ADS server that answers LDS and CDS and never RDS or EDS."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        self.requests: list[discovery_pb2.DiscoveryRequest] = []

    async def StreamAggregatedResources(self, request_iterator: Any, context: Any) -> AsyncIterator[Any]:
        async for request in request_iterator:
            self.requests.append(request)
            if request.type_url in (LISTENER_TYPE, CLUSTER_TYPE) and not request.response_nonce:
                resources = self.snapshot.resources(request.type_url).values()
                yield discovery_pb2.DiscoveryResponse(
                    version_info="v1", type_url=request.type_url, nonce="n1", resources=resources
                )


async def test_initial_fetch_timeout_publishes_what_has_arrived(start_client: Callable[..., Sidecar]) -> None:
    servicer = _ListenersOnly(example_snapshot("v1"))
    server = grpc.aio.server()
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        sidecar = start_client(f"127.0.0.1:{port}", initial_fetch_timeout=0.3)
        await eventually(lambda: any(r.type_url == ROUTE_TYPE for r in servicer.requests), "the RDS subscription")
        assert sidecar.client.source == "none"  # waiting for routes and endpoints
        await eventually(lambda: sidecar.client.source == "xds", "the partial config after the timeout")
        current = sidecar.client.current
        assert "researcher" in current.listeners and current.routes == {}
        assert set(current.clusters) and current.endpoints == {}
        assert set(current.versions) == {LISTENER_TYPE, CLUSTER_TYPE}
        # The first request carried the node; every type was ACKed with the response's nonce.
        assert servicer.requests[0].node.id == NODE_ID
        assert all(not r.HasField("node") for r in servicer.requests[1:])
        acks = {r.type_url: r for r in servicer.requests if r.response_nonce}
        assert acks[LISTENER_TYPE].version_info == "v1" and not acks[LISTENER_TYPE].HasField("error_detail")
        rds = [r for r in servicer.requests if r.type_url == ROUTE_TYPE]
        assert sorted(rds[0].resource_names) == sorted(sidecar.client.describe()["subscriptions"]["rds"])
    finally:
        await server.stop(None)


async def test_unreachable_control_plane_without_a_saved_config(
    start_client: Callable[..., Sidecar], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "xds.json"
    path.write_text("garbage")
    with caplog.at_level(logging.WARNING, logger="agentmesh.sidecar.xds"):
        sidecar = start_client(f"127.0.0.1:{free_port()}", path)
        await eventually(lambda: "no saved xDS config" in caplog.text, "the warning")
    assert "ignoring the saved xDS config" in caplog.text
    assert sidecar.client.source == "none" and sidecar.client.current is EMPTY_SNAPSHOT
    assert sidecar.published == []
    assert sidecar.metric("agentmesh_xds_connected") == 0
    assert sidecar.client.describe()["last_update"] is None


async def test_a_saved_config_of_another_agent_is_ignored(start_client: Callable[..., Sidecar], tmp_path: Path) -> None:
    path = tmp_path / "xds.json"
    persist.save(path, MeshSnapshot(), agent="planner")
    sidecar = start_client(f"127.0.0.1:{free_port()}", path)
    await asyncio.sleep(0.3)  # several failed connection attempts
    assert sidecar.client.source == "none" and sidecar.published == []


async def test_a_failing_consumer_does_not_stop_the_client(
    control_plane: ControlPlane, start_client: Callable[..., Sidecar], caplog: pytest.LogCaptureFixture
) -> None:
    def broken(_: MeshSnapshot) -> None:
        raise RuntimeError("consumer bug")

    control_plane.cache.set_default(example_snapshot("v1"))
    with caplog.at_level(logging.ERROR, logger="agentmesh.sidecar.xds"):
        sidecar = start_client(control_plane.target, on_snapshot=broken)
        await eventually(control_plane.synced, "v1 ACKed despite the consumer")
    assert "the xDS snapshot consumer failed" in caplog.text
    assert sidecar.client.source == "xds"


def test_node_identity_and_options() -> None:
    node = NODE.to_proto()
    assert node.id == NODE_ID and node.cluster == "researcher" and node.locality.zone == "a"
    assert node.user_agent_name == "agentmesh-sidecar"
    stats = SidecarStats(agent="researcher", version="v1", team="research")
    with pytest.raises(ValueError, match="backoff"):
        AdsClient(target="x:1", node=NODE, stats=stats, persist_path=None, on_snapshot=print, backoff_start=0)
    client = AdsClient(target="x:1", node=NODE, stats=stats, persist_path=None, on_snapshot=print)
    assert client.source == "none" and client.current is EMPTY_SNAPSHOT and client.last_nack is None
    assert "researcher~127.0.0.1:7001" in repr(client)
