"""`agentmesh credential` and `agentmesh whoami` against a real admin API with a credential store."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from click.testing import CliRunner, Result

from agentmesh.cli.main import cli
from control_plane.access.roles import Role
from tests.unit.control_plane.api.harness import TOKEN
from tests.unit.control_plane.api.roles_harness import RolesHarness, start_roles_admin

_T = TypeVar("_T")


class BackgroundRoles:
    """The roles harness served from a loop in another thread (the CLI is synchronous)."""

    def __init__(self, db: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="roles-api", daemon=True)
        self._thread.start()
        self.harness: RolesHarness = self.run(start_roles_admin(db))

    def run(self, coroutine: Coroutine[Any, Any, _T]) -> _T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=20)

    def close(self) -> None:
        self.run(self.harness.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=20)
        self.loop.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[BackgroundRoles]:
    background = BackgroundRoles(tmp_path / "cp.db")
    yield background
    background.close()


@pytest.fixture
def cp(server: BackgroundRoles) -> RolesHarness:
    return server.harness


def agentmesh(cp: RolesHarness, *args: str, token: str = TOKEN) -> Result:
    environment = {"AGENTMESH_CONTROL_PLANE": cp.address, "AGENTMESH_TOKEN": token}
    return CliRunner().invoke(cli, list(args), env=environment, catch_exceptions=False)


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
