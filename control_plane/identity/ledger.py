"""How many workload certificates the CA has issued, kept in the control plane's SQLite file.

The count survives restarts, so `agentmesh ca show` reports every certificate
since the CA was made, not since the process started (the Prometheus counter
`agentmesh_identity_certificates_issued_total` is per process). Each issuance
is also logged with its SPIFFE ID, serial and expiry.
"""

from __future__ import annotations

import threading
from pathlib import Path

from control_plane.database import connect

_SCHEMA = """
CREATE TABLE IF NOT EXISTS identity_counters (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
)
"""
_ISSUED = "issued"


class IssuanceLedger:
    """A persistent count of issued certificates."""

    def __init__(self, path: str | Path = ":memory:") -> None:
        self._path = str(path)
        self._lock = threading.Lock()
        self._db = connect(self._path, _SCHEMA, busy_timeout=10.0)

    def __repr__(self) -> str:
        return f"IssuanceLedger({self._path!r})"

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def record(self) -> int:
        """Counts one issued certificate; returns the new total."""
        with self._lock:
            row = self._db.execute(
                "INSERT INTO identity_counters (name, value) VALUES (?, 1) "
                "ON CONFLICT(name) DO UPDATE SET value = value + 1 RETURNING value",
                (_ISSUED,),
            ).fetchone()
        return int(row[0])

    def issued(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT value FROM identity_counters WHERE name = ?", (_ISSUED,)).fetchone()
        return int(row[0]) if row else 0
