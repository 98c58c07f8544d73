"""`agentmesh credential` and `agentmesh whoami` against a real admin API with a credential store."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import Result

from control_plane.access.roles import Role
from tests.unit.cli.conftest import Background, invoke
from tests.unit.control_plane.api.harness import TOKEN
from tests.unit.control_plane.api.roles_harness import RolesHarness, start_roles_admin


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Background[RolesHarness]]:
    background = Background(start_roles_admin(tmp_path / "cp.db"), name="roles-api")
    yield background
    background.close()


@pytest.fixture
def cp(server: Background[RolesHarness]) -> RolesHarness:
    return server.harness


def agentmesh(cp: RolesHarness, *args: str, token: str = TOKEN) -> Result:
    return invoke(cp.address, *args, token=token)


def test_create_prints_only_the_token_on_stdout(cp: RolesHarness):
    result = agentmesh(cp, "credential", "create", "ci", "--role", "operator", "--team", "research", "--ttl", "30d")

    assert result.exit_code == 0, result.output
    token = result.stdout.strip()
    assert token.startswith("amc_") and "\n" not in token
    assert "created: ci, role operator, teams research, expires 2030-01-31 00:00:00Z" in result.stderr
    assert "shown only once" in result.stderr
    whoami = agentmesh(cp, "whoami", token=token)
    assert whoami.exit_code == 0, whoami.output
    assert "Name:     ci\nRole:     operator\nTeams:    research\n" in whoami.stdout


def test_create_as_json_carries_every_field(cp: RolesHarness):
    result = agentmesh(cp, "credential", "create", "auditor", "--role", "viewer", "-o", "json")

    created = json.loads(result.stdout)
    assert (created["name"], created["role"], created["created_by"]) == ("auditor", "viewer", "bootstrap-admin")
    assert created["secret"].startswith("amc_")


def test_an_invalid_request_exits_2_naming_the_field(cp: RolesHarness):
    result = agentmesh(cp, "credential", "create", "ci", "--role", "viewer", "--team", "research")

    assert result.exit_code == 2
    assert result.stderr.startswith("error: teams: only operators are scoped to teams")


def test_a_bad_lifetime_is_a_usage_error(cp: RolesHarness):
    result = agentmesh(cp, "credential", "create", "ci", "--role", "viewer", "--ttl", "soon")

    assert result.exit_code == 2
    assert "'soon' is not a lifetime" in result.stderr


def test_list_and_revoke(cp: RolesHarness):
    kept = cp.credentials.create("kept", Role.VIEWER, created_by="tests").record
    gone = cp.credentials.create("gone", Role.ADMIN, created_by="tests")

    revoked = agentmesh(cp, "credential", "revoke", gone.record.id)
    active = agentmesh(cp, "credential", "list")
    every = agentmesh(cp, "credential", "list", "--all")
    refused = agentmesh(cp, "whoami", token=gone.token)

    assert revoked.stdout == f"credential/{gone.record.id} (gone) revoked\n"
    assert active.stdout.splitlines()[0].startswith("ID             NAME   ROLE     TEAMS   STATUS   CREATED")
    assert [line.split()[:5] for line in active.stdout.splitlines()[1:]] == [[kept.id, "kept", "viewer", "*", "active"]]
    rows = [line.split() for line in every.stdout.splitlines()[1:]]
    assert [(row[1], row[4]) for row in rows] == [("kept", "active"), ("gone", "revoked")]
    assert refused.exit_code == 1
    assert "was revoked at" in refused.stderr


def test_an_empty_list_says_so(cp: RolesHarness):
    result = agentmesh(cp, "credential", "list")

    assert result.exit_code == 0
    assert result.stdout == ""
    assert "No active credentials" in result.stderr


def test_whoami_with_the_bootstrap_token(cp: RolesHarness):
    result = agentmesh(cp, "whoami", "-o", "json")

    assert json.loads(result.stdout)["name"] == "bootstrap-admin"
    assert json.loads(result.stdout)["role"] == "admin"


def test_a_viewer_cannot_create_credentials(cp: RolesHarness):
    viewer = cp.issue("alice", Role.VIEWER)

    result = agentmesh(cp, "credential", "create", "ci", "--role", "admin", token=viewer)

    assert result.exit_code == 1
    assert "CreateCredential needs role admin; the credential 'alice' has role viewer" in result.stderr
    assert [c.name for c in cp.credentials.records()] == ["alice"]
