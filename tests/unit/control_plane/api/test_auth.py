"""The admin token: required on agentmesh.v1.ControlPlane, and nowhere else on the shared port."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from prometheus_client import CollectorRegistry

from agentmesh.v1 import control_pb2, control_pb2_grpc
from control_plane.api.auth import TokenAuthInterceptor
from control_plane.xds.ack_tracker import AckTracker
from control_plane.xds.ads_server import AggregatedDiscoveryService
from control_plane.xds.cache import SnapshotCache
from control_plane.xds.snapshot import CLUSTER_TYPE
from tests.unit.control_plane.api.harness import TOKEN, AdminHarness, start_admin
from tests.unit.control_plane.xds.ads_client import AdsClient
from tests.unit.control_plane.xds.resources import agent_snapshot


@pytest.fixture
async def admin(tmp_path: Path) -> AsyncIterator[AdminHarness]:
    harness = await start_admin(tmp_path / "cp.db")
    yield harness
    await harness.stop()


async def history(admin: AdminHarness, metadata: tuple[tuple[str, str], ...]) -> tuple[grpc.StatusCode, str]:
    """Calls PolicyHistory with `metadata`; returns the status code and details."""
    async with grpc.aio.insecure_channel(admin.address) as channel:
        stub = control_pb2_grpc.ControlPlaneStub(channel)
        try:
            await stub.PolicyHistory(control_pb2.PolicyHistoryRequest(), metadata=metadata, timeout=10)
        except grpc.aio.AioRpcError as exc:
            return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ((), "missing 'authorization: Bearer <token>' metadata"),
        ((("authorization", "Bearer wrong"),), "invalid token"),
        ((("authorization", f"Bearer {TOKEN}x"),), "invalid token"),
        ((("authorization", f"Basic {TOKEN}"),), "must be 'Bearer <token>'"),
        ((("authorization", "Bearer "),), "must be 'Bearer <token>'"),
        ((("x-token", TOKEN),), "missing"),
    ],
)
async def test_admin_calls_without_the_right_token_are_unauthenticated(
    admin: AdminHarness, metadata: tuple[tuple[str, str], ...], message: str
):
    code, details = await history(admin, metadata)

    assert code is grpc.StatusCode.UNAUTHENTICATED
    assert message in details


@pytest.mark.parametrize("value", [f"Bearer {TOKEN}", f"bearer {TOKEN}", f"Bearer  {TOKEN} "])
async def test_the_right_token_passes(admin: AdminHarness, value: str):
    assert await history(admin, (("authorization", value),)) == (grpc.StatusCode.OK, "")


async def test_other_services_on_the_port_need_no_token(admin: AdminHarness):
    admin.cache.set_default(agent_snapshot("1", endpoints={"v1": [7001]}))
    client = AdsClient(admin.port, "planner-1")
    try:
        await client.send(CLUSTER_TYPE)
        response = await client.recv()
    finally:
        await client.close()

    assert response.version_info == "1"


async def test_streaming_methods_are_refused_too():
    """A protected stream (here ADS, under a custom prefix) ends with UNAUTHENTICATED before any message."""
    cache, tracker = SnapshotCache(), AckTracker()
    cache.set_default(agent_snapshot("1", endpoints={"v1": [7001]}))
    ads = AggregatedDiscoveryService(cache, tracker, registry=CollectorRegistry())
    interceptor = TokenAuthInterceptor(TOKEN, prefix="/envoy.service.discovery.v3.AggregatedDiscoveryService/")
    server = grpc.aio.server(interceptors=(interceptor,))
    ads.add_to_server(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    client = AdsClient(port, "planner-1")
    try:
        await client.send(CLUSTER_TYPE)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.recv()
    finally:
        await client.close()
        await server.stop(None)

    assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert tracker.snapshot() == []


def test_an_empty_token_is_refused():
    with pytest.raises(ValueError, match="must not be empty"):
        TokenAuthInterceptor("")


def test_the_token_never_appears_in_the_repr():
    assert TOKEN not in repr(TokenAuthInterceptor(TOKEN))
