"""Join tokens: what lets a new workload enroll as one agent, kept in the control plane's SQLite file.

A token is `amjt.<id>.<secret>`: the prefix makes it recognisable in logs and
to secret scanners, the id names it in lists and revocations, and only a
SHA-256 hash of the secret is stored (the secret is 256 random bits, so a
fast hash is enough; it is compared in constant time). A token is scoped to
one agent of one team, expires (default 1 h), allows `max_uses` enrollments
(default 1) and can be revoked.

`consume` checks and counts one use in a single write transaction, so two
enrollments racing for the last use cannot both succeed (across threads and
across processes sharing the file). Refusals say which of malformed, unknown,
revoked, expired or used up the token is.

The store is synchronous and safe to share between threads (one connection
behind a lock); the admin API and the Identity service call it through
`asyncio.to_thread`.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

from agentmesh.identity.spiffe import SpiffeId, check_name
from control_plane.database import connect, transaction

PREFIX: Final = "amjt"
DEFAULT_TTL: Final = timedelta(hours=1)
DEFAULT_MAX_USES: Final = 1
_ID_BYTES = 8
_SECRET_BYTES = 32
_TOKEN = re.compile(rf"^{PREFIX}\.(?P<id>[0-9a-f]{{{_ID_BYTES * 2}}})\.(?P<secret>[A-Za-z0-9_-]{{20,100}})$")

# Why a token was refused (metric label values).
MALFORMED: Final = "malformed"
UNKNOWN: Final = "unknown"
REVOKED: Final = "revoked"
EXPIRED: Final = "expired"
USED_UP: Final = "used_up"
REFUSALS: Final = (MALFORMED, UNKNOWN, REVOKED, EXPIRED, USED_UP)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS join_tokens (
    id          TEXT PRIMARY KEY,
    secret_hash TEXT NOT NULL,
    agent       TEXT NOT NULL,
    team        TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    expires_at  TEXT NOT NULL,
    max_uses    INTEGER NOT NULL,
    uses        INTEGER NOT NULL DEFAULT 0,
    revoked_at  TEXT,
    created_by  TEXT NOT NULL,
    description TEXT NOT NULL
)
"""


class JoinTokenRefused(Exception):
    """A token that does not allow an enrollment; `reason` is one of REFUSALS."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class JoinTokenNotFound(KeyError):
    """No token with that id."""


@dataclass(frozen=True)
class JoinToken:
    """A stored token (never its secret)."""

    id: str
    agent: str
    team: str
    created_at: datetime
    expires_at: datetime
    max_uses: int
    uses: int
    revoked_at: datetime | None
    created_by: str
    description: str

    def spiffe_id(self, trust_domain: str) -> SpiffeId:
        return SpiffeId(trust_domain, self.team, self.agent)

    def state(self, now: datetime) -> str:
        """'active', or the refusal it would get now: 'revoked', 'expired' or 'used_up'."""
        if self.revoked_at is not None:
            return REVOKED
        if now >= self.expires_at:
            return EXPIRED
        if self.uses >= self.max_uses:
            return USED_UP
        return "active"

    @classmethod
    def from_row(cls, row: tuple[object, ...]) -> JoinToken:
        token_id, agent, team, created, expires, max_uses, uses, revoked, created_by, description = row
        return cls(
            id=str(token_id),
            agent=str(agent),
            team=str(team),
            created_at=datetime.fromisoformat(str(created)),
            expires_at=datetime.fromisoformat(str(expires)),
            max_uses=int(str(max_uses)),
            uses=int(str(uses)),
            revoked_at=datetime.fromisoformat(str(revoked)) if revoked is not None else None,
            created_by=str(created_by),
            description=str(description),
        )


@dataclass(frozen=True)
class CreatedJoinToken:
    """A new token and its secret string, which exists only here (the store keeps a hash)."""

    token: JoinToken
    secret: str


_COLUMNS = "id, agent, team, created_at, expires_at, max_uses, uses, revoked_at, created_by, description"


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def parse_token(text: str) -> tuple[str, str]:
    """(id, secret) of a token string; raises JoinTokenRefused(MALFORMED) saying what a token looks like."""
    match = _TOKEN.fullmatch(text.strip())
    if match is None:
        raise JoinTokenRefused(
            MALFORMED,
            f"the join token is malformed: expected {PREFIX}.<id>.<secret> as printed by `agentmesh token create`",
        )
    return match["id"], match["secret"]


class JoinTokenStore:
    """Join tokens in one SQLite database (the control plane's file, or ':memory:')."""

    def __init__(self, path: str | Path = ":memory:", *, clock: Callable[[], datetime] | None = None) -> None:
        self._path = str(path)
        self._clock = clock or (lambda: datetime.now(UTC))
        self._lock = threading.RLock()
        self._db = connect(self._path, _SCHEMA, busy_timeout=10.0)

    def __repr__(self) -> str:
        return f"JoinTokenStore({self._path!r})"

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def create(
        self,
        *,
        agent: str,
        team: str,
        created_by: str,
        ttl: timedelta = DEFAULT_TTL,
        max_uses: int = DEFAULT_MAX_USES,
        description: str = "",
    ) -> CreatedJoinToken:
        """Stores a new token; raises ValueError naming the bad field."""
        check_name(agent, "agent")
        check_name(team, "team")
        if ttl <= timedelta(0):
            raise ValueError("ttl must be positive")
        if max_uses < 1:
            raise ValueError("max_uses must be at least 1")
        token_id = secrets.token_hex(_ID_BYTES)
        secret = secrets.token_urlsafe(_SECRET_BYTES)
        now = self._clock()
        with self._lock, transaction(self._db) as db:
            db.execute(
                f"INSERT INTO join_tokens ({_COLUMNS}, secret_hash) VALUES (?, ?, ?, ?, ?, ?, 0, NULL, ?, ?, ?)",
                (
                    token_id,
                    agent,
                    team,
                    now.isoformat(),
                    (now + ttl).isoformat(),
                    max_uses,
                    created_by,
                    description,
                    _hash(secret),
                ),
            )
        token = JoinToken(token_id, agent, team, now, now + ttl, max_uses, 0, None, created_by, description)
        return CreatedJoinToken(token, f"{PREFIX}.{token_id}.{secret}")

    def get(self, token_id: str) -> JoinToken:
        with self._lock:
            row = self._db.execute(f"SELECT {_COLUMNS} FROM join_tokens WHERE id = ?", (token_id,)).fetchone()
        if row is None:
            raise JoinTokenNotFound(token_id)
        return JoinToken.from_row(row)

    def list_tokens(self, *, include_inactive: bool = False) -> list[JoinToken]:
        """Tokens, newest first; only those that still allow an enrollment unless `include_inactive`."""
        with self._lock:
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM join_tokens ORDER BY created_at DESC, id").fetchall()
        tokens = [JoinToken.from_row(row) for row in rows]
        if include_inactive:
            return tokens
        now = self._clock()
        return [token for token in tokens if token.state(now) == "active"]

    def revoke(self, token_id: str) -> JoinToken:
        """Revokes a token (again: no change); raises JoinTokenNotFound."""
        with self._lock, transaction(self._db) as db:
            updated = db.execute(
                "UPDATE join_tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                (self._clock().isoformat(), token_id),
            ).rowcount
            if not updated and db.execute("SELECT 1 FROM join_tokens WHERE id = ?", (token_id,)).fetchone() is None:
                raise JoinTokenNotFound(token_id)
        return self.get(token_id)

    def check(self, text: str) -> JoinToken:
        """The token if it allows an enrollment now, without using it; raises JoinTokenRefused saying why not."""
        token_id, secret = parse_token(text)
        with self._lock:
            return self._usable(self._db, token_id, secret)

    def consume(self, text: str) -> JoinToken:
        """Uses the token once and returns it (with the use counted); raises JoinTokenRefused saying why not."""
        token_id, secret = parse_token(text)
        with self._lock, transaction(self._db) as db:
            token = self._usable(db, token_id, secret)
            db.execute("UPDATE join_tokens SET uses = uses + 1 WHERE id = ?", (token_id,))
        return replace(token, uses=token.uses + 1)

    def _usable(self, db: sqlite3.Connection, token_id: str, secret: str) -> JoinToken:
        row = db.execute(f"SELECT {_COLUMNS}, secret_hash FROM join_tokens WHERE id = ?", (token_id,)).fetchone()
        if row is None or not hmac.compare_digest(str(row[-1]), _hash(secret)):
            raise JoinTokenRefused(UNKNOWN, f"join token {token_id} is unknown to this control plane")
        token = JoinToken.from_row(row[:-1])
        state = token.state(self._clock())
        if state == REVOKED:
            raise JoinTokenRefused(REVOKED, f"join token {token_id} was revoked")
        if state == EXPIRED:
            raise JoinTokenRefused(
                EXPIRED, f"join token {token_id} expired at {token.expires_at.isoformat(timespec='seconds')}"
            )
        if state == USED_UP:
            raise JoinTokenRefused(
                USED_UP,
                f"join token {token_id} was already used {token.uses} of {token.max_uses} time(s): "
                "create a new one with `agentmesh token create`",
            )
        return token
