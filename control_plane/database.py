"""The control plane's SQLite file: how each store opens its connection and writes in one transaction.

Every store (policy versions, credentials, join tokens, the issuance count,
the registry journal) keeps its own tables in the one file given with
`--db`, or ':memory:'. Each holds one connection in autocommit mode, shared
by its threads behind the store's lock, so transactions are explicit:
`transaction` begins one with BEGIN IMMEDIATE (the write lock is taken at
once, so two writers, even in two processes, never both read the old state)
and commits it, or rolls it back when the block raises. On a file, the
journal is WAL, so readers never wait for a writer.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

MEMORY: Final = ":memory:"
# sqlite3's own default: how long a statement waits for another connection's write lock.
DEFAULT_BUSY_TIMEOUT: Final = 5.0


def connect(
    path: str | Path, schema: str, *, busy_timeout: float = DEFAULT_BUSY_TIMEOUT, synchronous_normal: bool = False
) -> sqlite3.Connection:
    """A connection to the file at `path` (or ':memory:') with `schema` (CREATE ... IF NOT EXISTS) applied.

    `synchronous_normal` trades the last commits before a power loss (never
    an application crash) for fewer fsyncs, which WAL makes safe.
    """
    db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=busy_timeout)
    if str(path) != MEMORY:
        db.execute("PRAGMA journal_mode = WAL")
        if synchronous_normal:
            db.execute("PRAGMA synchronous = NORMAL")
    db.executescript(schema)
    return db


@contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction: committed when the block ends, rolled back when it raises (hold the store's lock)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
