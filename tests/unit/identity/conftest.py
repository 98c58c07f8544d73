"""An in-process Identity service on loopback: a real CA (in memory), join-token store and metrics."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest
from prometheus_client import CollectorRegistry

from agentmesh.v1 import control_pb2_grpc
from control_plane.api.identity import IdentityService
from control_plane.identity.ca import CertificateAuthority
from control_plane.identity.join_tokens import JoinTokenStore
from control_plane.identity.ledger import IssuanceLedger


@dataclass
class IdentityServer:
    ca: CertificateAuthority
    tokens: JoinTokenStore
    ledger: IssuanceLedger
    metrics: CollectorRegistry
    server: grpc.aio.Server
    port: int

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def token(self, agent: str = "researcher", team: str = "research", **options: object) -> str:
        return self.tokens.create(agent=agent, team=team, created_by="test", **options).secret  # type: ignore[arg-type]

    def refused(self, operation: str, reason: str) -> float:
        value = self.metrics.get_sample_value(
            "agentmesh_identity_requests_refused_total", {"operation": operation, "reason": reason}
        )
        return value or 0.0

    def issued(self, operation: str) -> float:
        value = self.metrics.get_sample_value("agentmesh_identity_certificates_issued_total", {"operation": operation})
        return value or 0.0


async def start_identity_server(
    *,
    workload_ttl: dt.timedelta = dt.timedelta(hours=1),
    port: int = 0,
    ca: CertificateAuthority | None = None,
    tokens: JoinTokenStore | None = None,
) -> IdentityServer:
    ca = ca or CertificateAuthority.in_memory(trust_domain="agentmesh.local", workload_ttl=workload_ttl)
    tokens = tokens or JoinTokenStore()
    ledger, metrics = IssuanceLedger(), CollectorRegistry()
    server = grpc.aio.server()
    control_pb2_grpc.add_IdentityServicer_to_server(
        IdentityService(ca=ca, tokens=tokens, ledger=ledger, registry=metrics), server
    )
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    return IdentityServer(ca, tokens, ledger, metrics, server, bound)


async def stop_identity_server(server: IdentityServer) -> None:
    await server.server.stop(None)
    server.tokens.close()
    server.ledger.close()


@pytest.fixture
async def identity_server() -> AsyncIterator[IdentityServer]:
    server = await start_identity_server()
    yield server
    await stop_identity_server(server)


@pytest.fixture
async def channel(identity_server: IdentityServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(identity_server.address) as opened:
        yield opened
