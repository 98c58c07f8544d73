"""A real admin API for tests: AdminService and ADS on one grpc.aio server on loopback, behind the token check.

Everything behind it is real: a PolicyStore in a temporary SQLite file, a
Registry, an AckTracker, a SnapshotCache and the AggregatedDiscoveryService.
`populate(registry)` registers the example agents the policies in
examples/policies/ name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import grpc
from google.protobuf import duration_pb2
from prometheus_client import CollectorRegistry

from agentmesh.v1 import control_pb2_grpc, manifest_pb2
from control_plane.api.admin import AdminService
from control_plane.api.auth import TokenAuthInterceptor
from control_plane.policy.store import PolicyStore
from control_plane.registry import Registry
from control_plane.xds.ack_tracker import AckTracker
from control_plane.xds.ads_server import AggregatedDiscoveryService
from control_plane.xds.cache import SnapshotCache

TOKEN = "s3cret-token"
ROOT = Path(__file__).resolve().parents[4]
EXAMPLES = ROOT / "examples" / "policies"
RESEARCHER = "research.v1.Researcher"
WRITER = "writing.v1.Writer"
PLANNER = "planning.v1.Planner"


@dataclass
class Clock:
    """The registry's clock, moved by tests."""

    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class AdminHarness:
    store: PolicyStore
    registry: Registry
    tracker: AckTracker
    cache: SnapshotCache
    ads: AggregatedDiscoveryService
    server: grpc.aio.Server
    port: int
    clock: Clock
    changes: list[int] = field(default_factory=list)
    snapshot_version: str = "p0-g1"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def stop(self) -> None:
        await self.server.stop(None)
        self.store.close()


def manifest(
    name: str, version: str, service: str, *skills: tuple[str, bool], team: str = "", tags: tuple[str, ...] = ()
) -> bytes:
    message = manifest_pb2.Manifest(name=name, version=version, team=team, services=[service])
    for method, idempotent in skills:
        message.skills.add(
            method=f"/{service}/{method}",
            idempotent=idempotent,
            default_timeout=duration_pb2.Duration(seconds=20),
            tags=list(tags),
        )
    return message.SerializeToString()


def populate(registry: Registry) -> None:
    """researcher v1 (two instances) and v2, writer and planner: what examples/policies/ name."""
    researcher_v1 = manifest("researcher", "v1", RESEARCHER, ("Search", True), team="research", tags=("search",))
    researcher_v2 = manifest(
        "researcher", "v2", RESEARCHER, ("Search", True), ("Cite", False), team="research", tags=("search", "web")
    )
    for address in ("127.0.0.1:7001", "127.0.0.1:7002"):
        registry.register(
            agent="researcher",
            version="v1",
            team="research",
            address=address,
            services=[RESEARCHER],
            manifest=researcher_v1,
        )
    registry.register(
        agent="researcher",
        version="v2",
        team="research",
        address="127.0.0.1:7011",
        services=[RESEARCHER],
        manifest=researcher_v2,
        zone="eu-1",
    )
    registry.register(
        agent="writer",
        version="v1",
        team="writing",
        address="127.0.0.1:7101",
        services=[WRITER],
        manifest=manifest("writer", "v1", WRITER, ("Draft", False), team="writing"),
    )
    registry.register(
        agent="planner",
        version="v1",
        team="planning",
        address="127.0.0.1:7201",
        services=[PLANNER],
        manifest=manifest("planner", "v1", PLANNER, ("Plan", False), team="planning"),
    )


async def start_admin(db: Path, *, token: str = TOKEN) -> AdminHarness:
    """Starts the server on port 0 of 127.0.0.1 (call from the loop that will serve it)."""
    clock = Clock()
    store = PolicyStore(db)
    registry = Registry(clock=clock)
    cache, tracker = SnapshotCache(), AckTracker()
    ads = AggregatedDiscoveryService(cache, tracker, registry=CollectorRegistry())
    server = grpc.aio.server(interceptors=(TokenAuthInterceptor(token),))
    holder: list[AdminHarness] = []
    service = AdminService(
        store=store,
        registry=registry,
        tracker=tracker,
        ads=ads,
        snapshot_version=lambda: holder[0].snapshot_version,
        on_policy_change=lambda: holder[0].changes.append(store.current_version()),
        clock=clock,
        wall_clock=lambda: 1_800_000_000.0 + clock.now,
    )
    control_pb2_grpc.add_ControlPlaneServicer_to_server(service, server)
    ads.add_to_server(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    harness = AdminHarness(store, registry, tracker, cache, ads, server, port, clock)
    holder.append(harness)
    return harness
