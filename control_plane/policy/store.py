"""The versioned policy store: every change makes a new mesh-wide version.

One SQLite file (WAL mode), or ':memory:' in tests. A version is the whole
policy set at that point, with author, time, message, what was added, changed
and removed, and a unified diff of the YAML renderings. Documents are stored
once per distinct content (content-addressed), so a version costs one row per
document it holds. Rollback makes a new version equal to an old one; history
only grows.

Version 0 is the empty set before the first change. Applying documents that
are already stored, identically, makes no version. Before a version is written
the resulting set is checked as a whole (`check_policy_set`): two policies of
one kind for one target are refused here even if the caller skipped
validation.

A change may carry a `guard`: it is called inside the write transaction with
every document the change adds, changes or removes (the stored and the new
form), and may raise to refuse it (the admin API's team scope); nothing is
written then.

The store is synchronous and safe to share between threads of one process
(one connection behind a lock); an asyncio app calls it directly for small
sets or through `asyncio.to_thread`.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import sqlite3
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agentmesh.config import ConfigError
from control_plane.database import connect, transaction
from control_plane.policy.model import KINDS, Policy, PolicyRef, policy_from_dict, policy_to_dict, render_yaml
from control_plane.policy.validate import check_policy_set

_SCHEMA = """
CREATE TABLE IF NOT EXISTS versions (
    version    INTEGER PRIMARY KEY,
    created_at TEXT NOT NULL,
    author     TEXT NOT NULL,
    message    TEXT NOT NULL,
    added      TEXT NOT NULL,
    changed    TEXT NOT NULL,
    removed    TEXT NOT NULL,
    diff       TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS blobs (
    digest TEXT PRIMARY KEY,
    body   TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS members (
    version INTEGER NOT NULL REFERENCES versions(version),
    kind    TEXT NOT NULL,
    name    TEXT NOT NULL,
    digest  TEXT NOT NULL REFERENCES blobs(digest),
    PRIMARY KEY (version, kind, name)
);
"""


# Sees the documents a change touches (before and after) and raises to refuse the change.
ChangeGuard = Callable[[Sequence[Policy]], None]


class PolicyStoreError(Exception):
    """A store operation was refused (unknown version, unknown document, duplicate input)."""


@dataclass(frozen=True)
class ChangeResult:
    """What a change did, or would do with dry_run.

    `version` is the new version when one was created, the would-be version for a
    dry run that changes something, and the current version when nothing changes.
    """

    version: int
    added: tuple[PolicyRef, ...]
    changed: tuple[PolicyRef, ...]
    removed: tuple[PolicyRef, ...]
    unchanged: tuple[PolicyRef, ...]
    diff: str
    dry_run: bool = False

    @property
    def is_noop(self) -> bool:
        return not (self.added or self.changed or self.removed)

    @property
    def created(self) -> bool:
        """True when a new version was written."""
        return not self.dry_run and not self.is_noop


@dataclass(frozen=True)
class VersionInfo:
    """One entry of the history."""

    version: int
    created_at: datetime
    author: str
    message: str
    added: tuple[PolicyRef, ...]
    changed: tuple[PolicyRef, ...]
    removed: tuple[PolicyRef, ...]
    diff: str


@dataclass(frozen=True)
class PolicySet:
    """The whole policy set at one version, sorted by (kind, name): what the xDS translation reads."""

    version: int
    policies: tuple[Policy, ...]


def _canonical(policy: Policy) -> str:
    return json.dumps(policy_to_dict(policy), sort_keys=True, separators=(",", ":"))


def _digest(body: str) -> str:
    return hashlib.sha256(body.encode()).hexdigest()


def _refs(text: str) -> tuple[PolicyRef, ...]:
    return tuple(PolicyRef(kind, name) for kind, name in json.loads(text))


def _refs_json(refs: Iterable[PolicyRef]) -> str:
    return json.dumps([list(ref) for ref in refs])


def _diff(before: dict[PolicyRef, Policy], after: dict[PolicyRef, Policy]) -> str:
    chunks: list[str] = []
    for ref in sorted(before.keys() | after.keys()):
        if ref in before and ref in after and _canonical(before[ref]) == _canonical(after[ref]):
            continue  # the same document (map keys may come back in another order)
        old = render_yaml(before[ref]).splitlines(keepends=True) if ref in before else []
        new = render_yaml(after[ref]).splitlines(keepends=True) if ref in after else []
        if old == new:
            continue
        chunks += difflib.unified_diff(
            old,
            new,
            fromfile=f"a/{ref}" if ref in before else "/dev/null",
            tofile=f"b/{ref}" if ref in after else "/dev/null",
        )
    return "".join(chunks)


class PolicyStore:
    """Versioned storage of the policy set in one SQLite database."""

    def __init__(self, path: str | Path = ":memory:", *, clock: Callable[[], datetime] | None = None) -> None:
        self._path = str(path)
        self._clock = clock or (lambda: datetime.now(UTC))
        self._lock = threading.RLock()
        self._db = connect(self._path, _SCHEMA, synchronous_normal=True)
        self._db.execute("PRAGMA foreign_keys = ON")

    def __repr__(self) -> str:
        return f"PolicyStore({self._path!r})"

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> PolicyStore:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # --- reading --------------------------------------------------------------------------------------------------

    def current_version(self) -> int:
        """The newest version; 0 before the first change."""
        with self._lock:
            return self._current(self._db)

    @staticmethod
    def _current(db: sqlite3.Connection) -> int:
        row = db.execute("SELECT MAX(version) FROM versions").fetchone()
        return int(row[0] or 0)

    def _load(self, db: sqlite3.Connection, version: int) -> dict[PolicyRef, Policy]:
        rows = db.execute(
            "SELECT m.kind, m.name, b.body FROM members m JOIN blobs b ON b.digest = m.digest "
            "WHERE m.version = ? ORDER BY m.kind, m.name",
            (version,),
        )
        return {PolicyRef(kind, name): policy_from_dict(json.loads(body)) for kind, name, body in rows}

    def _check_version(self, db: sqlite3.Connection, version: int) -> None:
        if version != 0 and db.execute("SELECT 1 FROM versions WHERE version = ?", (version,)).fetchone() is None:
            raise PolicyStoreError(f"no version {version} (current: {self._current(db)})")

    def current(self) -> PolicySet:
        """The newest version and its whole policy set, read together."""
        with self._lock:
            version = self._current(self._db)
            return PolicySet(version, tuple(self._load(self._db, version).values()))

    def get(self, kind: str | None = None, name: str | None = None, version: int | None = None) -> list[Policy]:
        """Policies at `version` (default: current), optionally one kind and one name, sorted by (kind, name)."""
        if kind is not None and kind not in KINDS:
            raise PolicyStoreError(f"unknown kind {kind!r}: expected one of {', '.join(KINDS)}")
        with self._lock:
            at = self._current(self._db) if version is None else version
            self._check_version(self._db, at)
            policies = self._load(self._db, at)
        return [
            p
            for ref, p in policies.items()
            if (kind is None or ref.kind == kind) and (name is None or ref.name == name)
        ]

    def history(self, limit: int | None = 20) -> list[VersionInfo]:
        """Versions, newest first."""
        query = "SELECT * FROM versions ORDER BY version DESC"
        params: tuple[Any, ...] = ()
        if limit is not None:
            query += " LIMIT ?"
            params = (limit,)
        with self._lock:
            rows = self._db.execute(query, params).fetchall()
        return [
            VersionInfo(
                version=row[0],
                created_at=datetime.fromisoformat(row[1]),
                author=row[2],
                message=row[3],
                added=_refs(row[4]),
                changed=_refs(row[5]),
                removed=_refs(row[6]),
                diff=row[7],
            )
            for row in rows
        ]

    # --- changing -------------------------------------------------------------------------------------------------

    def apply(
        self,
        documents: Iterable[Policy],
        author: str,
        dry_run: bool = False,
        *,
        message: str = "",
        prune: bool = False,
        guard: ChangeGuard | None = None,
    ) -> ChangeResult:
        """Adds or replaces documents by (kind, name); with `prune`, also removes every document not given.

        Raises ConfigError when the resulting set breaks a set-wide rule, and
        PolicyStoreError when one (kind, name) is given twice.
        """
        given: dict[PolicyRef, Policy] = {}
        for policy in documents:
            if policy.ref in given:
                raise PolicyStoreError(f"{policy.ref} is given twice")
            given[policy.ref] = policy

        def change(current: dict[PolicyRef, Policy]) -> dict[PolicyRef, Policy]:
            return dict(given) if prune else {**current, **given}

        return self._change(change, author, message or "apply", dry_run=dry_run, touched=given.keys(), guard=guard)

    def delete(
        self,
        kind: str,
        name: str,
        author: str,
        *,
        message: str = "",
        dry_run: bool = False,
        guard: ChangeGuard | None = None,
    ) -> ChangeResult:
        """Removes one document; raises PolicyStoreError when it is not stored."""
        ref = PolicyRef(kind, name)

        def change(current: dict[PolicyRef, Policy]) -> dict[PolicyRef, Policy]:
            if ref not in current:
                raise PolicyStoreError(f"{ref} is not stored")
            return {r: p for r, p in current.items() if r != ref}

        return self._change(change, author, message or f"delete {ref}", dry_run=dry_run, guard=guard)

    def rollback(
        self,
        version: int,
        author: str,
        *,
        message: str = "",
        dry_run: bool = False,
        guard: ChangeGuard | None = None,
    ) -> ChangeResult:
        """Makes a new version whose set equals `version`'s (no version when it already does)."""

        def change(current: dict[PolicyRef, Policy]) -> dict[PolicyRef, Policy]:
            self._check_version(self._db, version)
            return self._load(self._db, version)

        return self._change(
            change, author, message or f"rollback to version {version}", dry_run=dry_run, check=False, guard=guard
        )

    def _change(
        self,
        change: Callable[[dict[PolicyRef, Policy]], dict[PolicyRef, Policy]],
        author: str,
        message: str,
        *,
        dry_run: bool,
        touched: Iterable[PolicyRef] | None = None,
        check: bool = True,
        guard: ChangeGuard | None = None,
    ) -> ChangeResult:
        if not author:
            raise PolicyStoreError("author must not be empty")
        with self._lock, transaction(self._db) as db:
            current_version = self._current(db)
            before = self._load(db, current_version)
            after = dict(sorted(change(before).items()))
            if check:
                issues = check_policy_set(list(after.values()))
                if issues:
                    raise ConfigError(issues)
            old = {ref: _canonical(p) for ref, p in before.items()}
            new = {ref: _canonical(p) for ref, p in after.items()}
            added = tuple(ref for ref in new if ref not in old)
            removed = tuple(ref for ref in old if ref not in new)
            changed = tuple(ref for ref in new if ref in old and old[ref] != new[ref])
            if guard is not None:
                guard([*(before[ref] for ref in changed + removed), *(after[ref] for ref in added + changed)])
            same = (ref for ref in new if ref in old and old[ref] == new[ref])
            scope = set(touched) if touched is not None else None
            unchanged = tuple(ref for ref in same if scope is None or ref in scope)
            diff = _diff(before, after)
            result = ChangeResult(current_version, added, changed, removed, unchanged, diff, dry_run)
            if result.is_noop:
                return result
            version = current_version + 1
            result = ChangeResult(version, added, changed, removed, unchanged, diff, dry_run)
            if not dry_run:
                self._write_version(db, version, after, new, author, message, result)
            return result

    def _write_version(
        self,
        db: sqlite3.Connection,
        version: int,
        policies: dict[PolicyRef, Policy],
        bodies: dict[PolicyRef, str],
        author: str,
        message: str,
        result: ChangeResult,
    ) -> None:
        db.execute(
            "INSERT INTO versions VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                version,
                self._clock().isoformat(),
                author,
                message,
                _refs_json(result.added),
                _refs_json(result.changed),
                _refs_json(result.removed),
                result.diff,
            ),
        )
        for ref in policies:
            body = bodies[ref]
            digest = _digest(body)
            db.execute("INSERT OR IGNORE INTO blobs VALUES (?, ?)", (digest, body))
            db.execute("INSERT INTO members VALUES (?, ?, ?, ?)", (version, ref.kind, ref.name, digest))
