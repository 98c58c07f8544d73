"""`agentmesh proxy-status` against a real admin API with real ADS streams behind it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest

from control_plane.xds.ack_tracker import SyncStatus
from control_plane.xds.snapshot import CLUSTER_TYPE, ROUTE_TYPE
from tests.unit.cli.conftest import BackgroundAdmin, Run
from tests.unit.control_plane.xds.ads_client import AdsClient
from tests.unit.control_plane.xds.resources import agent_snapshot


async def _connect(admin: BackgroundAdmin) -> list[AdsClient]:
    """planner-1 ACKs everything but RDS, which it NACKs; writer-1 never answers its CDS response."""
    harness = admin.harness
    harness.cache.set_default(agent_snapshot("7", endpoints={"v1": [7001]}))
    harness.snapshot_version = "p2-g7"
    planner, writer = AdsClient(harness.port, "planner-1"), AdsClient(harness.port, "writer-1")
    await planner.subscribe_all()
    for _ in range(4):
        response = await planner.recv()
        if response.type_url == ROUTE_TYPE:
            await planner.nack(response, "route researcher: cluster agent/researcher/v9 not found")
        else:
            await planner.ack(response)
    await writer.send(CLUSTER_TYPE)
    await writer.recv()
    deadline = asyncio.get_running_loop().time() + 5
    while harness.tracker.status("planner-1", ROUTE_TYPE) is not SyncStatus.NACKED or any(
        s.status is SyncStatus.STALE for s in harness.tracker.snapshot() if s.node_id == "planner-1"
    ):
        assert asyncio.get_running_loop().time() < deadline, "planner-1 never settled"
        await asyncio.sleep(0.01)
    return [planner, writer]


@pytest.fixture
def proxies(admin: BackgroundAdmin) -> Iterator[None]:
    clients = admin.run(_connect(admin))
    yield
    for client in clients:
        admin.run(client.close())


def test_proxy_status_table_with_nack_details(run: Run, proxies: None):
    result = run("proxy-status")

    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["NODE", "CLUSTER", "LDS", "RDS", "CDS", "EDS"]
    assert lines[1].split() == ["planner-1", "planner", "SYNCED", "NACKED", "SYNCED", "SYNCED"]
    assert lines[2].split() == ["writer-1", "planner", "NOT", "SENT", "NOT", "SENT", "STALE", "NOT", "SENT"]
    assert "control plane snapshot: p2-g7" in lines
    assert lines[-1] == "  planner-1 RDS rejected version 7: route researcher: cluster agent/researcher/v9 not found"


def test_proxy_status_json(run: Run, proxies: None):
    data = json.loads(run("proxy-status", "-o", "json").stdout)

    assert data["snapshot_version"] == "p2-g7"
    planner = data["proxies"][0]
    assert planner["node_id"] == "planner-1"
    assert planner["resources"][1] == {
        "type": "rds",
        "status": "NACKED",
        "sent_version": "7",
        "acked_version": "",
        "error": "route researcher: cluster agent/researcher/v9 not found",
    }


def test_proxy_status_without_proxies(run: Run):
    result = run("proxy-status")

    assert (result.exit_code, result.stdout) == (0, "")
    assert result.stderr == "No proxies connected (control plane snapshot: p0-g1).\n"
