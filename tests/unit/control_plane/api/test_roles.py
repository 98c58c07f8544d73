"""Admin API roles over a real grpc.aio server: the role table, credentials, team scope and authors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2

from agentmesh.v1 import control_pb2
from control_plane.access.roles import BOOTSTRAP_ID, BOOTSTRAP_NAME, Role
from control_plane.api.auth import REQUIRED_ROLES, NoCallerError, caller
from tests.unit.control_plane.api.harness import TOKEN
from tests.unit.control_plane.api.roles_harness import RolesHarness, start_roles_admin

SERVICE = control_pb2.DESCRIPTOR.services_by_name["ControlPlane"]
METHODS = [method.name for method in SERVICE.methods]


def config(name: str, target: str, model: str = "small") -> str:
    return (
        f"apiVersion: agentmesh.io/v1\nkind: AgentConfig\nmetadata: {{name: {name}}}\n"
        f"spec: {{target: '{target}', values: {{model: {model}}}}}\n"
    )


MESH_WIDE = "apiVersion: agentmesh.io/v1\nkind: AccessPolicy\nmetadata: {name: mesh}\nspec: {target: '*'}\n"


@pytest.fixture
async def cp(tmp_path: Path) -> AsyncIterator[RolesHarness]:
    harness = await start_roles_admin(tmp_path / "cp.db")
    yield harness
    await harness.stop()


@pytest.fixture
async def channel(cp: RolesHarness) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(cp.address) as opened:
        yield opened


async def call(channel: grpc.aio.Channel, method: str, request: Any, token: str | None) -> Any:
    """One ControlPlane call by name with `token`; returns the answer or the AioRpcError."""
    output = getattr(control_pb2, SERVICE.methods_by_name[method].output_type.name)
    invoke = channel.unary_unary(
        f"/{SERVICE.full_name}/{method}",
        request_serializer=lambda message: message.SerializeToString(),
        response_deserializer=output.FromString,
    )
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    try:
        return await invoke(request, metadata=metadata, timeout=10)
    except grpc.aio.AioRpcError as exc:
        return exc


def empty_request(method: str) -> Any:
    return getattr(control_pb2, SERVICE.methods_by_name[method].input_type.name)()


def apply_request(*files: str, **options: Any) -> control_pb2.ApplyPoliciesRequest:
    return control_pb2.ApplyPoliciesRequest(
        files=[control_pb2.PolicyFile(name=f"f{i}.yaml", content=content) for i, content in enumerate(files)],
        **options,
    )


def code(answer: Any) -> grpc.StatusCode:
    return answer.code() if isinstance(answer, grpc.aio.AioRpcError) else grpc.StatusCode.OK


# --- the table ----------------------------------------------------------------------------------------------------


def test_every_control_plane_method_has_a_required_role():
    assert sorted(REQUIRED_ROLES) == sorted(METHODS)


@pytest.mark.parametrize(
    ("method", "role"),
    [
        ("GetPolicies", Role.VIEWER),
        ("WhoAmI", Role.VIEWER),
        ("GetCertificateAuthority", Role.VIEWER),
        ("ApplyPolicies", Role.OPERATOR),
        ("RollbackPolicies", Role.OPERATOR),
        ("ListJoinTokens", Role.ADMIN),
        ("CreateCredential", Role.ADMIN),
    ],
)
def test_sample_entries(method: str, role: Role):
    assert REQUIRED_ROLES[method] is role


@pytest.mark.parametrize("role", list(Role))
async def test_each_role_may_call_exactly_the_methods_its_rank_allows(
    cp: RolesHarness, channel: grpc.aio.Channel, role: Role
):
    token = cp.issue(f"{role}-user", role)

    for method in METHODS:
        answer = await call(channel, method, empty_request(method), token)
        if role.includes(REQUIRED_ROLES[method]):
            # Allowed: whatever the (empty) request earns, it is not an access refusal.
            assert code(answer) not in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED), method
        else:
            assert code(answer) is grpc.StatusCode.PERMISSION_DENIED, method
            needed = REQUIRED_ROLES[method]
            assert f"{method} needs role {needed}" in answer.details()
            assert f"the credential '{role}-user' has role {role}" in answer.details()
            assert cp.refused(method, "role") == 1


async def test_a_method_missing_from_the_table_is_refused_to_everyone(tmp_path: Path):
    table = {name: role for name, role in REQUIRED_ROLES.items() if name != "PolicyHistory"}
    harness = await start_roles_admin(tmp_path / "cp.db", roles=table)
    try:
        async with grpc.aio.insecure_channel(harness.address) as opened:
            refused = await call(opened, "PolicyHistory", control_pb2.PolicyHistoryRequest(), TOKEN)
            allowed = await call(opened, "GetPolicies", control_pb2.GetPoliciesRequest(), TOKEN)
    finally:
        await harness.stop()

    assert code(refused) is grpc.StatusCode.PERMISSION_DENIED
    assert refused.details() == "PolicyHistory is not in the admin API's role table, so no credential may call it"
    assert code(allowed) is grpc.StatusCode.OK
    assert harness.refused("PolicyHistory", "unlisted_method") == 1


# --- authentication -----------------------------------------------------------------------------------------------


async def test_an_expired_credential_is_unauthenticated(cp: RolesHarness, channel: grpc.aio.Channel):
    token = cp.issue("temp", Role.VIEWER, ttl=timedelta(hours=1))
    assert code(await call(channel, "WhoAmI", control_pb2.WhoAmIRequest(), token)) is grpc.StatusCode.OK

    cp.wall_clock.advance(timedelta(hours=1))
    answer = await call(channel, "WhoAmI", control_pb2.WhoAmIRequest(), token)

    assert code(answer) is grpc.StatusCode.UNAUTHENTICATED
    assert answer.details().startswith("credential 'temp' (id ")
    assert "expired at 2030-01-01 01:00:00Z" in answer.details()
    assert cp.refused("WhoAmI", "expired_token") == 1


async def test_a_revoked_credential_is_unauthenticated_from_the_next_call(cp: RolesHarness, channel: grpc.aio.Channel):
    created = await call(
        channel, "CreateCredential", control_pb2.CreateCredentialRequest(name="ci", role="admin"), TOKEN
    )
    assert code(await call(channel, "ListCredentials", control_pb2.ListCredentialsRequest(), created.secret)) is (
        grpc.StatusCode.OK
    )

    revoked = await call(channel, "RevokeCredential", control_pb2.RevokeCredentialRequest(id=created.id), TOKEN)
    answer = await call(channel, "ListCredentials", control_pb2.ListCredentialsRequest(), created.secret)

    assert revoked.revoked and revoked.name == "ci" and not revoked.secret
    assert code(answer) is grpc.StatusCode.UNAUTHENTICATED
    assert f"credential 'ci' (id {created.id}) was revoked at" in answer.details()
    assert cp.refused("ListCredentials", "revoked_token") == 1


@pytest.mark.parametrize(
    ("token", "reason", "message"),
    [
        (None, "missing_token", "missing 'authorization: Bearer <token>' metadata"),
        ("amc_not-issued", "unknown_token", "invalid token: it is neither the control plane's admin token"),
    ],
)
async def test_missing_and_unknown_tokens_are_unauthenticated(
    cp: RolesHarness, channel: grpc.aio.Channel, token: str | None, reason: str, message: str
):
    answer = await call(channel, "GetPolicies", control_pb2.GetPoliciesRequest(), token)

    assert code(answer) is grpc.StatusCode.UNAUTHENTICATED
    assert message in answer.details()
    assert cp.refused("GetPolicies", reason) == 1


async def test_concurrent_calls_each_see_their_own_caller(cp: RolesHarness, channel: grpc.aio.Channel):
    tokens = {f"user-{i}": cp.issue(f"user-{i}", Role.VIEWER) for i in range(8)}
    tokens[BOOTSTRAP_NAME] = TOKEN

    answers = await asyncio.gather(
        *(call(channel, "WhoAmI", control_pb2.WhoAmIRequest(), token) for token in tokens.values() for _ in range(3))
    )

    assert [answer.name for answer in answers] == [name for name in tokens for _ in range(3)]


def test_caller_outside_an_admitted_call_is_a_wiring_error():
    with pytest.raises(NoCallerError, match="must be served behind TokenAuthInterceptor"):
        caller(None)  # type: ignore[arg-type]


# --- credentials --------------------------------------------------------------------------------------------------


async def test_whoami_describes_the_credential(cp: RolesHarness, channel: grpc.aio.Channel):
    request = control_pb2.CreateCredentialRequest(
        name="ci", role="operator", teams=["research"], ttl=duration_pb2.Duration(seconds=3600)
    )
    created = await call(channel, "CreateCredential", request, TOKEN)

    me = await call(channel, "WhoAmI", control_pb2.WhoAmIRequest(), created.secret)
    boot = await call(channel, "WhoAmI", control_pb2.WhoAmIRequest(), TOKEN)

    assert (me.id, me.name, me.role, list(me.teams), me.created_by) == (
        created.id,
        "ci",
        "operator",
        ["research"],
        BOOTSTRAP_NAME,
    )
    assert me.expires.ToSeconds() - me.created.ToSeconds() == 3600
    assert not me.secret
    assert (boot.id, boot.name, boot.role, boot.HasField("expires")) == (BOOTSTRAP_ID, BOOTSTRAP_NAME, "admin", False)


async def test_list_shows_active_credentials_without_tokens(cp: RolesHarness, channel: grpc.aio.Channel):
    kept = cp.issue("kept", Role.VIEWER)
    gone = await call(
        channel, "CreateCredential", control_pb2.CreateCredentialRequest(name="gone", role="viewer"), TOKEN
    )
    await call(channel, "RevokeCredential", control_pb2.RevokeCredentialRequest(id=gone.id), TOKEN)

    active = await call(channel, "ListCredentials", control_pb2.ListCredentialsRequest(), TOKEN)
    every = await call(channel, "ListCredentials", control_pb2.ListCredentialsRequest(all=True), TOKEN)

    assert [c.name for c in active.credentials] == ["kept"]
    assert [(c.name, c.revoked) for c in every.credentials] == [("kept", False), ("gone", True)]
    assert all(not c.secret for c in every.credentials)
    assert kept not in str(every)


@pytest.mark.parametrize(
    ("request_", "status", "message"),
    [
        (control_pb2.CreateCredentialRequest(name="ci"), grpc.StatusCode.INVALID_ARGUMENT, "role: required"),
        (
            control_pb2.CreateCredentialRequest(name="ci", role="god"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "role: unknown role 'god'",
        ),
        (
            control_pb2.CreateCredentialRequest(name="", role="viewer"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "name: '' is not a valid credential name",
        ),
        (
            control_pb2.CreateCredentialRequest(name="ci", role="admin", teams=["research"]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "teams: only operators are scoped to teams",
        ),
        (
            control_pb2.CreateCredentialRequest(name="ci", role="viewer", ttl=duration_pb2.Duration()),
            grpc.StatusCode.INVALID_ARGUMENT,
            "ttl: must be positive",
        ),
        (control_pb2.RevokeCredentialRequest(id=""), grpc.StatusCode.INVALID_ARGUMENT, "id: name the credential"),
        (control_pb2.RevokeCredentialRequest(id="nope"), grpc.StatusCode.NOT_FOUND, "no credential has id 'nope'"),
        (
            control_pb2.RevokeCredentialRequest(id=BOOTSTRAP_ID),
            grpc.StatusCode.FAILED_PRECONDITION,
            "bootstrap-admin is the control plane's own --token and cannot be revoked",
        ),
    ],
)
async def test_credential_requests_refused_name_the_reason(
    cp: RolesHarness, channel: grpc.aio.Channel, request_: Any, status: grpc.StatusCode, message: str
):
    method = "CreateCredential" if isinstance(request_, control_pb2.CreateCredentialRequest) else "RevokeCredential"

    answer = await call(channel, method, request_, TOKEN)

    assert code(answer) is status
    assert message in answer.details()
    assert cp.credentials.records(include_inactive=True) == []


# --- authors ------------------------------------------------------------------------------------------------------


async def test_changes_are_recorded_with_the_credential_name(cp: RolesHarness, channel: grpc.aio.Channel):
    token = cp.issue("release-bot", Role.OPERATOR)

    await call(channel, "ApplyPolicies", apply_request(config("c1", "researcher"), author="mallory"), token)
    await call(channel, "DeletePolicy", control_pb2.DeletePolicyRequest(kind="AgentConfig", name="c1"), TOKEN)
    await call(channel, "RollbackPolicies", control_pb2.RollbackPoliciesRequest(version=1, author="x"), token)
    history = await call(channel, "PolicyHistory", control_pb2.PolicyHistoryRequest(), token)

    assert [(v.version, v.author) for v in history.versions] == [
        (3, "release-bot"),
        (2, BOOTSTRAP_NAME),
        (1, "release-bot"),
    ]


async def test_credentials_record_who_created_them(cp: RolesHarness, channel: grpc.aio.Channel):
    admin = await call(
        channel, "CreateCredential", control_pb2.CreateCredentialRequest(name="ops", role="admin"), TOKEN
    )

    made = await call(
        channel, "CreateCredential", control_pb2.CreateCredentialRequest(name="ci", role="viewer"), admin.secret
    )

    assert (admin.created_by, made.created_by) == (BOOTSTRAP_NAME, "ops")


# --- team scope ---------------------------------------------------------------------------------------------------


@pytest.fixture
def research(cp: RolesHarness) -> str:
    return cp.issue("research-ops", Role.OPERATOR, "research")


async def test_a_scoped_operator_changes_its_teams_agents(cp: RolesHarness, channel: grpc.aio.Channel, research: str):
    applied = await call(channel, "ApplyPolicies", apply_request(config("r", "researcher")), research)
    changed = await call(channel, "ApplyPolicies", apply_request(config("r", "researcher", "large")), research)
    deleted = await call(
        channel, "DeletePolicy", control_pb2.DeletePolicyRequest(kind="AgentConfig", name="r"), research
    )

    assert (applied.version, changed.version, deleted.version) == (1, 2, 3)
    assert cp.store.history()[0].author == "research-ops"


async def test_a_scoped_operator_is_refused_other_teams_agents(
    cp: RolesHarness, channel: grpc.aio.Channel, research: str
):
    answer = await call(
        channel, "ApplyPolicies", apply_request(config("r", "researcher"), config("w", "writer")), research
    )

    assert code(answer) is grpc.StatusCode.PERMISSION_DENIED
    assert answer.details() == (
        "ApplyPolicies: a credential scoped to team research may change only the policies of its agents; "
        "out of scope: writer (team writing; AgentConfig/w)"
    )
    assert cp.store.current_version() == 0
    assert cp.refused("ApplyPolicies", "scope") == 1


@pytest.mark.parametrize("dry_run", [False, True])
async def test_a_scoped_operator_is_refused_mesh_wide_policy(
    cp: RolesHarness, channel: grpc.aio.Channel, research: str, dry_run: bool
):
    answer = await call(channel, "ApplyPolicies", apply_request(MESH_WIDE, dry_run=dry_run), research)

    assert code(answer) is grpc.StatusCode.PERMISSION_DENIED
    assert "out of scope: * (mesh-wide: needs a credential not scoped to teams; AccessPolicy/mesh)" in answer.details()


async def test_a_scoped_operator_is_refused_agents_of_unknown_team(
    cp: RolesHarness, channel: grpc.aio.Channel, research: str
):
    answer = await call(channel, "ApplyPolicies", apply_request(config("g", "ghost")), research)

    assert code(answer) is grpc.StatusCode.PERMISSION_DENIED
    assert "ghost (team unknown: the agent is not registered; AgentConfig/g)" in answer.details()


async def test_a_scoped_operator_cannot_delete_or_prune_other_teams_policies(
    cp: RolesHarness, channel: grpc.aio.Channel, research: str
):
    await call(channel, "ApplyPolicies", apply_request(config("r", "researcher"), config("w", "writer")), TOKEN)

    deleted = await call(
        channel, "DeletePolicy", control_pb2.DeletePolicyRequest(kind="AgentConfig", name="w"), research
    )
    pruned = await call(
        channel, "ApplyPolicies", apply_request(config("r", "researcher", "large"), prune=True), research
    )

    assert code(deleted) is code(pruned) is grpc.StatusCode.PERMISSION_DENIED
    assert "out of scope: writer (team writing; AgentConfig/w)" in pruned.details()
    assert cp.store.current_version() == 1
    assert cp.refused("DeletePolicy", "scope") == cp.refused("ApplyPolicies", "scope") == 1


async def test_a_scoped_operator_cannot_move_a_policy_to_its_team(
    cp: RolesHarness, channel: grpc.aio.Channel, research: str
):
    await call(channel, "ApplyPolicies", apply_request(config("shared", "writer")), TOKEN)

    answer = await call(channel, "ApplyPolicies", apply_request(config("shared", "researcher")), research)

    assert code(answer) is grpc.StatusCode.PERMISSION_DENIED
    assert "writer (team writing; AgentConfig/shared)" in answer.details()


async def test_a_scoped_rollback_needs_every_changed_document_in_scope(
    cp: RolesHarness, channel: grpc.aio.Channel, research: str
):
    await call(channel, "ApplyPolicies", apply_request(config("r", "researcher"), config("w", "writer")), TOKEN)
    await call(channel, "ApplyPolicies", apply_request(config("r", "researcher", "large")), TOKEN)
    await call(channel, "ApplyPolicies", apply_request(config("w", "writer", "large")), TOKEN)

    # Back to version 2 changes only writer's document; back to version 1 changes both.
    refused = await call(channel, "RollbackPolicies", control_pb2.RollbackPoliciesRequest(version=1), research)
    assert code(refused) is grpc.StatusCode.PERMISSION_DENIED
    assert "writer (team writing; AgentConfig/w)" in refused.details()
    assert "researcher" not in refused.details().partition("out of scope:")[2]

    await call(channel, "ApplyPolicies", apply_request(config("w", "writer")), TOKEN)
    allowed = await call(channel, "RollbackPolicies", control_pb2.RollbackPoliciesRequest(version=1), research)

    assert code(allowed) is grpc.StatusCode.OK
    assert [f"{r.kind}/{r.name}" for r in allowed.changed] == ["AgentConfig/r"]
    assert cp.store.history()[0].author == "research-ops"


async def test_an_unscoped_operator_may_change_mesh_wide_policy(cp: RolesHarness, channel: grpc.aio.Channel):
    token = cp.issue("mesh-ops", Role.OPERATOR)

    answer = await call(channel, "ApplyPolicies", apply_request(MESH_WIDE), token)

    assert code(answer) is grpc.StatusCode.OK
    assert cp.store.history()[0].author == "mesh-ops"


async def test_reads_are_never_scoped(cp: RolesHarness, channel: grpc.aio.Channel, research: str):
    await call(channel, "ApplyPolicies", apply_request(config("w", "writer")), TOKEN)

    listed = await call(channel, "GetPolicies", control_pb2.GetPoliciesRequest(), research)

    assert [p.name for p in listed.policies] == ["w"]
