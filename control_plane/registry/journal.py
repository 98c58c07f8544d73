"""The registry's last known instances, kept in the control plane's SQLite file.

A restarted control plane restores them, so it serves the same endpoints at
once instead of an empty mesh until every sidecar has re-registered (which
would make consumers drop their routes for a few seconds). Restored
instances count as freshly heard from: each must re-register within the
registry's TTL or it expires, as any silent instance does.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

from control_plane.database import connect, transaction
from control_plane.registry.instances import AgentInstance
from control_plane.registry.registry import Registry

_SCHEMA = """
CREATE TABLE IF NOT EXISTS registry_instances (
    instance_id TEXT PRIMARY KEY,
    body TEXT NOT NULL,
    manifest BLOB
)
"""


class RegistryJournal:
    """Writes the registry's instances on every change; `restore` reads them back into a registry."""

    def __init__(self, path: str | Path) -> None:
        self._lock = threading.Lock()
        self._db = connect(path, _SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def save(self, instances: list[AgentInstance]) -> None:
        rows = [
            (
                i.instance_id,
                json.dumps(
                    {
                        "agent": i.agent,
                        "version": i.version,
                        "team": i.team,
                        "address": i.address,
                        "services": list(i.services),
                        "healthy": i.healthy,
                        "zone": i.zone,
                        "admin_address": i.admin_address,
                        "mtls": i.mtls,
                        "spiffe_id": i.spiffe_id,
                    }
                ),
                i.manifest,
            )
            for i in instances
        ]
        with self._lock, transaction(self._db) as db:
            db.execute("DELETE FROM registry_instances")
            db.executemany("INSERT INTO registry_instances VALUES (?, ?, ?)", rows)

    def restore(self, registry: Registry) -> int:
        """Registers every saved instance; returns how many."""
        with self._lock:
            rows = self._db.execute("SELECT instance_id, body, manifest FROM registry_instances").fetchall()
        for instance_id, body, manifest in rows:
            saved = json.loads(body)
            registry.register(instance_id=instance_id, manifest=manifest, **saved)
        return len(rows)
