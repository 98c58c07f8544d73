"""The admin API wired as the control plane wires it: bootstrap token, credential store, refusal metrics.

Like `harness.start_admin`, over a real grpc.aio server on loopback, plus a
`CredentialStore` in the same SQLite file (on a clock tests move) and the
Prometheus registry the refusals are counted in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
from prometheus_client import CollectorRegistry

from agentmesh.v1 import control_pb2_grpc
from control_plane.access.credentials import CredentialStore
from control_plane.access.roles import Role
from control_plane.api.admin import AdminService
from control_plane.api.auth import REQUIRED_ROLES, AdminRefusals, TokenAuthInterceptor
from control_plane.policy.store import PolicyStore
from control_plane.registry import Registry
from control_plane.xds.ack_tracker import AckTracker
from control_plane.xds.ads_server import AggregatedDiscoveryService
from control_plane.xds.cache import SnapshotCache
from tests.unit.control_plane.api.harness import TOKEN, Clock, populate


@dataclass
class WallClock:
    """The credential store's clock, moved by tests."""

    now: datetime = field(default_factory=lambda: datetime(2030, 1, 1, tzinfo=UTC))

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


@dataclass
class RolesHarness:
    store: PolicyStore
    credentials: CredentialStore
    registry: Registry
    metrics: CollectorRegistry
    server: grpc.aio.Server
    port: int
    wall_clock: WallClock

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def issue(self, name: str, role: Role | str, *teams: str, ttl: timedelta | None = None) -> str:
        """A new credential's token (created directly in the store)."""
        return self.credentials.create(name, role, teams=teams, ttl=ttl, created_by="tests").token

    def refused(self, method: str, reason: str) -> float:
        value = self.metrics.get_sample_value(
            "agentmesh_admin_requests_refused_total", {"method": method, "reason": reason}
        )
        return value or 0.0

    async def stop(self) -> None:
        await self.server.stop(None)
        self.store.close()
        self.credentials.close()


async def start_roles_admin(
    db: Path, *, populated: bool = True, roles: Mapping[str, Role] = REQUIRED_ROLES
) -> RolesHarness:
    """Starts the admin API on port 0 of 127.0.0.1 (call from the loop that will serve it)."""
    wall_clock = WallClock()
    store = PolicyStore(db)
    credentials = CredentialStore(db, clock=wall_clock)
    registry = Registry(clock=Clock())
    if populated:
        populate(registry)
    metrics = CollectorRegistry()
    refusals = AdminRefusals(metrics)
    cache, tracker = SnapshotCache(), AckTracker()
    ads = AggregatedDiscoveryService(cache, tracker, registry=CollectorRegistry())
    interceptor = TokenAuthInterceptor(TOKEN, credentials=credentials, refusals=refusals, roles=roles)
    server = grpc.aio.server(interceptors=(interceptor,))
    service = AdminService(
        store=store,
        registry=registry,
        tracker=tracker,
        ads=ads,
        snapshot_version=lambda: "p0-g1",
        on_policy_change=lambda: None,
        credentials=credentials,
        refusals=refusals,
    )
    control_pb2_grpc.add_ControlPlaneServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return RolesHarness(store, credentials, registry, metrics, server, port, wall_clock)
