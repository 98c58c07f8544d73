"""Admin API credentials: bearer tokens with a name, a role and an optional team scope, kept hashed.

The control plane's SQLite file holds one row per credential, next to the
policy versions. The token itself is shown once, when the credential is
created; the store keeps only its SHA-256 digest (tokens are 256 random bits,
so a plain digest is as strong as a slow password hash would be, and a
lookup by digest needs no per-row work). A credential is found by the digest
of the presented token whatever its state, so authentication can say whether
a token is unknown, expired or revoked.

Revocation takes effect on the next call: nothing is cached. Credentials are
never deleted; revoked and expired ones stay listed with `--all`, so the
authors named in policy history can always be traced to a credential.

Teams only narrow operators: reads are never scoped and admins manage
mesh-wide things (credentials, join tokens, the CA), so a team scope on a
viewer or an admin is refused rather than silently meaning nothing.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

from control_plane.access.roles import BOOTSTRAP_NAME, Caller, Role
from control_plane.database import connect

TOKEN_PREFIX: Final = "amc_"
_TOKEN_BYTES: Final = 32
_ID_BYTES: Final = 6

# A person or a pipeline: letters, digits, '.', '_', '@', '-' (an e-mail address fits).
_NAME: Final = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._@-]{0,62}[A-Za-z0-9])?$")
# As teams are written in manifests and policy (control_plane/policy/model.py).
_TEAM: Final = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS credentials (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    role        TEXT NOT NULL,
    teams       TEXT NOT NULL,
    token_hash  TEXT NOT NULL UNIQUE,
    created_at  TEXT NOT NULL,
    expires_at  TEXT,
    revoked_at  TEXT,
    created_by  TEXT NOT NULL
);
"""


class CredentialError(ValueError):
    """A credential request was refused as invalid; `field` names the request field at fault."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class UnknownCredentialError(LookupError):
    """No credential has this id."""


def token_digest(token: str) -> str:
    """The stored form of a token."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class CredentialRecord:
    """One stored credential (never the token)."""

    id: str
    name: str
    role: Role
    teams: tuple[str, ...]
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    created_by: str

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> CredentialRecord:
        id_, name, role, teams, created_at, expires_at, revoked_at, created_by = row
        return cls(
            id=id_,
            name=name,
            role=Role(role),
            teams=tuple(json.loads(teams)),
            created_at=datetime.fromisoformat(created_at),
            expires_at=datetime.fromisoformat(expires_at) if expires_at else None,
            revoked_at=datetime.fromisoformat(revoked_at) if revoked_at else None,
            created_by=created_by,
        )

    def expired(self, now: datetime) -> bool:
        return self.expires_at is not None and now >= self.expires_at

    def active(self, now: datetime) -> bool:
        """Neither revoked nor expired: its token authenticates."""
        return self.revoked_at is None and not self.expired(now)

    def status(self, now: datetime) -> str:
        """active, expired or revoked (revoked wins)."""
        if self.revoked_at is not None:
            return "revoked"
        return "expired" if self.expired(now) else "active"

    def caller(self) -> Caller:
        return Caller(self.name, self.role, self.teams, self.id)


@dataclass(frozen=True)
class IssuedCredential:
    """A new credential and its token, which exists only here: the store keeps its digest."""

    record: CredentialRecord
    token: str

    def __repr__(self) -> str:
        return f"IssuedCredential(record={self.record!r}, token='***')"


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise CredentialError(
            "name",
            f"{name!r} is not a valid credential name (1-64 letters, digits, '.', '_', '@' or '-', "
            "starting and ending with a letter or digit)",
        )
    if name == BOOTSTRAP_NAME:
        raise CredentialError("name", f"{BOOTSTRAP_NAME!r} is reserved for the control plane's own admin token")
    return name


def check_teams(role: Role, teams: Iterable[str]) -> tuple[str, ...]:
    """Sorted, distinct teams; only an operator may be scoped."""
    found = tuple(sorted(set(teams)))
    for team in found:
        if not _TEAM.match(team):
            raise CredentialError("teams", f"{team!r} is not a valid team name")
    if found and role is not Role.OPERATOR:
        raise CredentialError(
            "teams",
            f"only operators are scoped to teams; a {role} acts on the whole mesh "
            "(reads are never scoped; admins manage credentials, join tokens and the CA)",
        )
    return found


class CredentialStore:
    """Credentials in one SQLite database (the control plane's file, or ':memory:' in tests)."""

    def __init__(self, path: str | Path = ":memory:", *, clock: Callable[[], datetime] | None = None) -> None:
        self._path = str(path)
        self._clock = clock or (lambda: datetime.now(UTC))
        self._lock = threading.Lock()
        self._db = connect(self._path, _SCHEMA, synchronous_normal=True)

    def __repr__(self) -> str:
        return f"CredentialStore({self._path!r})"

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def now(self) -> datetime:
        """The store's clock: what expiry is judged by."""
        return self._clock()

    def create(
        self,
        name: str,
        role: Role | str,
        *,
        teams: Iterable[str] = (),
        ttl: timedelta | None = None,
        created_by: str,
    ) -> IssuedCredential:
        """Stores a new credential and returns it with its token; raises CredentialError for invalid input."""
        check_name(name)
        try:
            parsed = role if isinstance(role, Role) else Role.parse(role)
        except ValueError as exc:
            raise CredentialError("role", str(exc)) from None
        scope = check_teams(parsed, teams)
        if ttl is not None and ttl <= timedelta(0):
            raise CredentialError("ttl", "must be positive (leave it out for a credential that does not expire)")
        now = self._clock()
        record = CredentialRecord(
            id=secrets.token_hex(_ID_BYTES),
            name=name,
            role=parsed,
            teams=scope,
            created_at=now,
            expires_at=now + ttl if ttl is not None else None,
            revoked_at=None,
            created_by=created_by,
        )
        token = TOKEN_PREFIX + secrets.token_urlsafe(_TOKEN_BYTES)
        with self._lock:
            self._db.execute(
                "INSERT INTO credentials VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.id,
                    record.name,
                    record.role.value,
                    json.dumps(list(record.teams)),
                    token_digest(token),
                    record.created_at.isoformat(),
                    record.expires_at.isoformat() if record.expires_at else None,
                    None,
                    record.created_by,
                ),
            )
        return IssuedCredential(record, token)

    def find(self, token: str) -> CredentialRecord | None:
        """The credential this token belongs to, whatever its state; None when it belongs to none."""
        with self._lock:
            row = self._db.execute(
                f"SELECT {_COLUMNS} FROM credentials WHERE token_hash = ?", (token_digest(token),)
            ).fetchone()
        return CredentialRecord.from_row(row) if row else None

    def get(self, credential_id: str) -> CredentialRecord:
        with self._lock:
            row = self._db.execute(f"SELECT {_COLUMNS} FROM credentials WHERE id = ?", (credential_id,)).fetchone()
        if row is None:
            raise UnknownCredentialError(f"no credential has id {credential_id!r}")
        return CredentialRecord.from_row(row)

    def records(self, *, include_inactive: bool = False) -> list[CredentialRecord]:
        """Credentials in the order they were created; only active ones unless `include_inactive`."""
        with self._lock:
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM credentials ORDER BY rowid").fetchall()
        records = [CredentialRecord.from_row(row) for row in rows]
        if include_inactive:
            return records
        now = self._clock()
        return [record for record in records if record.active(now)]

    def revoke(self, credential_id: str) -> CredentialRecord:
        """Revokes a credential from now on; revoking a revoked one changes nothing."""
        with self._lock:
            self._db.execute(
                "UPDATE credentials SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                (self._clock().isoformat(), credential_id),
            )
        return self.get(credential_id)


_COLUMNS: Final = "id, name, role, teams, created_at, expires_at, revoked_at, created_by"
