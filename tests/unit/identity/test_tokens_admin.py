"""The join-token admin calls in process: the team from the registry, refusals naming the field, the CA view."""

from __future__ import annotations

import datetime as dt
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2

from agentmesh.v1 import control_pb2
from control_plane.api.admin import AdminError
from control_plane.api.tokens import JoinTokenAdmin
from control_plane.identity.ca import CertificateAuthority
from control_plane.identity.join_tokens import JoinTokenStore
from control_plane.identity.ledger import IssuanceLedger
from control_plane.registry import Registry

CONTEXT: Any = object()  # the admin calls only pass the servicer context on to `caller()`


@pytest.fixture
def registry() -> Registry:
    return Registry()


@pytest.fixture
def admin(registry: Registry) -> JoinTokenAdmin:
    ca = CertificateAuthority.in_memory(trust_domain="agentmesh.local", workload_ttl=dt.timedelta(hours=12))
    return JoinTokenAdmin(tokens=JoinTokenStore(), ca=ca, ledger=IssuanceLedger(), registry=registry)


async def _refusal(admin_call: Any) -> AdminError:
    with pytest.raises(AdminError) as caught:
        await admin_call
    return caught.value


async def test_create_takes_the_team_from_the_registry(admin: JoinTokenAdmin, registry: Registry) -> None:
    registry.register(agent="researcher", version="v1", address="127.0.0.1:7001", team="research")
    created = await admin.create(control_pb2.CreateJoinTokenRequest(agent="researcher"), CONTEXT)
    assert created.team == "research"
    assert created.spiffe_id == "spiffe://agentmesh.local/team/research/agent/researcher"
    assert created.secret.startswith(f"amjt.{created.id}.")
    assert created.created_by == "admin"  # no authenticated caller in this test
    assert created.max_uses == 1
    assert created.expires.ToDatetime() - created.created.ToDatetime() == dt.timedelta(hours=1)
    listed = await admin.list_tokens(control_pb2.ListJoinTokensRequest(), CONTEXT)
    assert [t.id for t in listed.tokens] == [created.id] and not listed.tokens[0].secret


async def test_create_refusals_name_the_field(admin: JoinTokenAdmin, registry: Registry) -> None:
    error = await _refusal(admin.create(control_pb2.CreateJoinTokenRequest(), CONTEXT))
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT and error.message.startswith("agent:")
    error = await _refusal(admin.create(control_pb2.CreateJoinTokenRequest(agent="ghost"), CONTEXT))
    assert "team: agent 'ghost' is not registered with a team" in error.message
    registry.register(agent="twin", version="v1", address="127.0.0.1:7002", team="red")
    registry.register(agent="twin", version="v2", address="127.0.0.1:7003", team="blue")
    error = await _refusal(admin.create(control_pb2.CreateJoinTokenRequest(agent="twin"), CONTEXT))
    assert "registered with teams blue, red" in error.message
    registry.register(agent="caps", version="v1", address="127.0.0.1:7004", team="Research.Team")
    error = await _refusal(admin.create(control_pb2.CreateJoinTokenRequest(agent="caps"), CONTEXT))
    assert error.message.startswith("team: ") and "not a valid team name" in error.message
    negative = control_pb2.CreateJoinTokenRequest(agent="a", team="t", ttl=duration_pb2.Duration(seconds=-5))
    error = await _refusal(admin.create(negative, CONTEXT))
    assert error.message.startswith("ttl:")


async def test_revoke_and_ca_view(admin: JoinTokenAdmin) -> None:
    created = await admin.create(control_pb2.CreateJoinTokenRequest(agent="a", team="t", max_uses=2), CONTEXT)
    revoked = await admin.revoke(control_pb2.RevokeJoinTokenRequest(id=created.id), CONTEXT)
    assert revoked.revoked and revoked.max_uses == 2
    error = await _refusal(admin.revoke(control_pb2.RevokeJoinTokenRequest(id="nope"), CONTEXT))
    assert error.code == grpc.StatusCode.NOT_FOUND
    error = await _refusal(admin.revoke(control_pb2.RevokeJoinTokenRequest(), CONTEXT))
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    authority = await admin.certificate_authority(control_pb2.GetCertificateAuthorityRequest(), CONTEXT)
    assert authority.trust_domain == "agentmesh.local"
    assert authority.workload_ttl.ToTimedelta() == dt.timedelta(hours=12)
    assert authority.issuer_pem == authority.trust_bundle_pem  # its own root signs
    assert authority.issued == 0
