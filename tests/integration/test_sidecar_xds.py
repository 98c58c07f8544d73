"""The sidecar's xDS client against the real control plane process (`agentmesh control-plane`).

Agents register over the control plane's Registration API, the example
policies are applied over its admin API, and an AdsClient for the researcher
sidecar receives, decodes and ACKs the resulting xDS resources; the control
plane's ProxyStatus shows the node SYNCED. When the control plane stops, the
client keeps its config, and a sidecar started meanwhile runs on the copy
saved to disk.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from pathlib import Path

import grpc
from google.protobuf import duration_pb2

from agentmesh.v1 import control_pb2, control_pb2_grpc, manifest_pb2
from sidecar.config.ads_client import AdsClient, NodeIdentity
from sidecar.config.registration import Registrar
from sidecar.config.snapshot import MeshSnapshot
from sidecar.stats import SidecarStats
from tests.integration.procs import AGENTMESH, ROOT, free_port, grpc_serving, start, wait_for

TOKEN = "xds-test-token"
AUTH = (("authorization", f"Bearer {TOKEN}"),)
POLICIES = ROOT / "examples" / "policies"
RESEARCHER = NodeIdentity(agent="researcher", address="127.0.0.1:17001", version="v1", team="research")


def manifest(name: str, version: str, service: str, methods: list[str]) -> manifest_pb2.Manifest:
    return manifest_pb2.Manifest(
        name=name,
        version=version,
        team="research" if name == "researcher" else "planning",
        services=[service],
        skills=[
            manifest_pb2.Skill(
                method=f"/{service}/{m}", idempotent=True, default_timeout=duration_pb2.Duration(seconds=5)
            )
            for m in methods
        ],
    )


async def eventually(check: Callable[[], bool], what: str, timeout: float = 30) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def client(target: str, path: Path, published: list[MeshSnapshot]) -> AdsClient:
    return AdsClient(
        target=target,
        node=RESEARCHER,
        stats=SidecarStats(agent="researcher", version="v1", team="research"),
        persist_path=path,
        on_snapshot=published.append,
        backoff_start=0.1,
        backoff_max=0.5,
        rng=random.Random(1),
    )


async def test_sidecar_xds_client_with_the_control_plane_process(tmp_path: Path) -> None:
    target = f"127.0.0.1:{free_port()}"
    argv = [*AGENTMESH, "control-plane", "--listen", target, "--http", f"127.0.0.1:{free_port()}"]
    control_plane = start("control-plane", [*argv, "--db", ":memory:", "--token", TOKEN], tmp_path)
    tasks: list[asyncio.Future[None]] = []
    try:
        wait_for(lambda: grpc_serving(target), what="the control plane", process=control_plane)
        registrars = [
            Registrar(
                control_plane=target,
                manifest=manifest(name, version, service, methods),
                address=address,
                admin_address="127.0.0.1:1",
                zone="",
                healthy=lambda: True,
            )
            for name, version, service, methods, address in (
                ("researcher", "v1", "research.v1.Researcher", ["Search"], RESEARCHER.address),
                ("researcher", "v2", "research.v1.Researcher", ["Search"], "127.0.0.2:17001"),
                ("planner", "v1", "planning.v1.Planner", ["Plan"], "127.0.0.1:17003"),
            )
        ]
        tasks += [asyncio.ensure_future(r.run()) for r in registrars]
        await asyncio.wait_for(asyncio.gather(*(r.registered.wait() for r in registrars)), 30)

        async with grpc.aio.insecure_channel(target) as channel:
            admin = control_pb2_grpc.ControlPlaneStub(channel)
            files = [
                control_pb2.PolicyFile(name=p.name, content=p.read_text()) for p in sorted(POLICIES.glob("*.yaml"))
            ]
            change = await admin.ApplyPolicies(
                control_pb2.ApplyPoliciesRequest(files=files, author="test"), metadata=AUTH, timeout=10
            )
            assert change.version >= 1

            path = tmp_path / "xds" / "researcher.json"
            published: list[MeshSnapshot] = []
            live = client(target, path, published)
            tasks.append(asyncio.ensure_future(live.run()))

            def configured() -> bool:
                inbound = live.current.inbound
                return inbound is not None and len(inbound.rbac) == 2 and "researcher" in live.current.listeners

            await eventually(configured, "the researcher's config with its access policy")
            current = live.current
            assert live.source == "xds" and live.connected
            assert current.inbound is not None
            assert current.inbound.request_headers["x-agentmesh-config-model"] == "small-model"
            table = current.route_table("researcher")
            assert table is not None
            names = [route.name for route in table.virtual_hosts[0].routes]
            assert "researcher-canary/beta-testers" in names
            clusters = {c.name for route in table.virtual_hosts[0].routes for c in route.action.clusters}
            assert clusters <= set(current.clusters) and "agent/researcher/v2" in clusters
            endpoints = current.endpoints["agent/researcher/v1"].endpoints
            assert [e.address for e in endpoints] == [RESEARCHER.address]

            async def node_synced() -> bool:
                status = await admin.ProxyStatus(control_pb2.ProxyStatusRequest(), metadata=AUTH, timeout=10)
                rows = [p for p in status.proxies if p.node_id == "researcher~127.0.0.1:17001"]
                return bool(rows) and {r.type: r.status for r in rows[0].resources} == dict.fromkeys(
                    ("cds", "eds", "lds", "rds"), "SYNCED"
                )

            deadline = asyncio.get_running_loop().time() + 30
            while not await node_synced():
                assert asyncio.get_running_loop().time() < deadline, "ProxyStatus never showed the node SYNCED"
                await asyncio.sleep(0.1)
            await eventually(path.exists, "the config saved to disk")

        # The control plane goes away: the running sidecar keeps its config.
        before = live.current
        assert control_plane.stop() == 0, control_plane.output()
        assert "xDS NACK" not in control_plane.output()
        await eventually(lambda: not live.connected, "the stream noticed down")
        assert live.current is before and live.source == "xds"

        # A sidecar starting now runs on the saved copy.
        restarted: list[MeshSnapshot] = []
        cold = client(target, path, restarted)
        tasks.append(asyncio.ensure_future(cold.run()))
        await eventually(lambda: cold.source == "disk", "the saved config in use")
        assert cold.current.routes == live.current.routes
        assert cold.current.inbound is not None and len(cold.current.inbound.rbac) == 2
        assert cold.describe()["source"] == "disk"
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        control_plane.stop()
