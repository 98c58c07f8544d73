"""The credential store: tokens shown once and kept hashed, validation, expiry and revocation."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from control_plane.access.credentials import (
    TOKEN_PREFIX,
    CredentialError,
    CredentialStore,
    UnknownCredentialError,
    token_digest,
)
from control_plane.access.roles import BOOTSTRAP_NAME, Role


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2030, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> CredentialStore:
    return CredentialStore(tmp_path / "cp.db", clock=clock)


def test_a_created_credential_is_found_by_its_token(store: CredentialStore, clock: Clock):
    issued = store.create("ci", "operator", teams=["research", "writing", "research"], created_by="alice")

    found = store.find(issued.token)

    assert issued.token.startswith(TOKEN_PREFIX)
    assert found == issued.record
    assert (found.name, found.role, found.teams, found.created_by) == (
        "ci",
        Role.OPERATOR,
        ("research", "writing"),
        "alice",
    )
    assert found.created_at == clock.now
    assert found.expires_at is None
    assert found.caller().name == "ci"
    assert store.find(issued.token + "x") is None
    assert store.find("") is None


def test_only_the_digest_of_the_token_is_stored(tmp_path: Path, store: CredentialStore):
    issued = store.create("ci", Role.VIEWER, created_by="alice")
    store.close()

    with sqlite3.connect(tmp_path / "cp.db") as db:
        cells = [str(cell) for row in db.execute("SELECT * FROM credentials") for cell in row]

    assert not any(issued.token in cell for cell in cells)
    assert token_digest(issued.token) in cells
    assert issued.token not in repr(issued)


def test_credentials_survive_a_restart(tmp_path: Path, store: CredentialStore):
    issued = store.create("ci", Role.ADMIN, created_by="alice")
    store.close()

    reopened = CredentialStore(tmp_path / "cp.db")

    assert reopened.find(issued.token) == issued.record


def test_expired_and_revoked_credentials_are_listed_only_with_all(store: CredentialStore, clock: Clock):
    short = store.create("short", Role.VIEWER, ttl=timedelta(hours=1), created_by="alice").record
    gone = store.create("gone", Role.VIEWER, created_by="alice").record
    kept = store.create("kept", Role.VIEWER, created_by="alice").record
    store.revoke(gone.id)
    clock.now += timedelta(hours=1)

    assert [c.name for c in store.records()] == ["kept"]
    every = {c.name: c.status(clock.now) for c in store.records(include_inactive=True)}
    assert every == {"short": "expired", "gone": "revoked", "kept": "active"}
    assert store.get(short.id).expired(clock.now)
    assert store.get(kept.id).active(clock.now)


def test_revoking_twice_keeps_the_first_revocation(store: CredentialStore, clock: Clock):
    record = store.create("ci", Role.OPERATOR, created_by="alice").record
    first = store.revoke(record.id)
    clock.now += timedelta(minutes=5)

    second = store.revoke(record.id)

    assert first.revoked_at == second.revoked_at == datetime(2030, 1, 1, tzinfo=UTC)


def test_an_unknown_id_cannot_be_revoked(store: CredentialStore):
    with pytest.raises(UnknownCredentialError, match="no credential has id 'nope'"):
        store.revoke("nope")


@pytest.mark.parametrize(
    ("name", "role", "teams", "ttl", "field", "reason"),
    [
        ("", "viewer", (), None, "name", "not a valid credential name"),
        ("with space", "viewer", (), None, "name", "not a valid credential name"),
        (BOOTSTRAP_NAME, "admin", (), None, "name", "reserved"),
        ("ci", "root", (), None, "role", "unknown role 'root': expected one of viewer, operator, admin"),
        ("ci", "viewer", ("research",), None, "teams", "only operators are scoped to teams"),
        ("ci", "admin", ("research",), None, "teams", "only operators are scoped to teams"),
        ("ci", "operator", ("bad team",), None, "teams", "'bad team' is not a valid team name"),
        ("ci", "operator", (), timedelta(0), "ttl", "must be positive"),
        ("ci", "operator", (), timedelta(seconds=-1), "ttl", "must be positive"),
    ],
)
def test_invalid_requests_name_the_field(
    store: CredentialStore,
    name: str,
    role: str,
    teams: tuple[str, ...],
    ttl: timedelta | None,
    field: str,
    reason: str,
):
    with pytest.raises(CredentialError) as caught:
        store.create(name, role, teams=teams, ttl=ttl, created_by="alice")

    assert caught.value.field == field
    assert reason in caught.value.reason
    assert store.records(include_inactive=True) == []


def test_names_may_be_email_addresses(store: CredentialStore):
    assert store.create("alice@example.com", "viewer", created_by="alice").record.name == "alice@example.com"
