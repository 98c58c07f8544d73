"""Which snapshot each node should have, with per-type versions and change watches.

The narrow interface between translation and serving (go-control-plane's
`SnapshotCache`): the translator calls `set_snapshot(node_id, snapshot)` or
`set_default(snapshot)`; the ADS server reads `entry(node_id)` and registers a
`watch(node_id, callback)` per open stream, so a stream learns that its node's
resources changed without polling.

Versions are tracked per resource type: publishing a snapshot gives a type the
snapshot's version only when that type's resources changed for the node, and
otherwise keeps the version (and publication time) it had, so the server does
not re-push unchanged types. The publication time per type is what
`agentmesh_cp_push_duration_seconds` measures from.

Not thread-safe: call it from one thread (the control plane's event loop).
Watch callbacks run synchronously inside `set_*`; they must only schedule work.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from control_plane.xds.snapshot import RESOURCE_TYPES, Snapshot

log = logging.getLogger(__name__)

Clock = Callable[[], float]


@dataclass(frozen=True)
class CacheEntry:
    """What one node (or the default scope) has: the snapshot plus per-type version and publication time."""

    snapshot: Snapshot
    type_versions: Mapping[str, str]
    published_at: Mapping[str, float]

    def version(self, type_url: str) -> str:
        """The version of one type: the snapshot version at which it last changed."""
        return self.type_versions.get(type_url, self.snapshot.version)


class Watch:
    """An open subscription to one node's entry; `cancel()` stops notifications."""

    __slots__ = ("_cache", "_callback", "node_id")

    def __init__(self, cache: SnapshotCache, node_id: str, callback: Callable[[], None]) -> None:
        self._cache = cache
        self._callback = callback
        self.node_id = node_id

    def notify(self) -> None:
        try:
            self._callback()
        except Exception:
            # One broken watcher must not stop the others from hearing about the change.
            log.exception("xDS watch callback failed", extra={"node_id": self.node_id})

    def cancel(self) -> None:
        self._cache._remove_watch(self)


class SnapshotCache:
    """Snapshots per node id, a default for nodes without one, and watches on both.

    A node's effective entry is its own snapshot if one was set, otherwise the
    default. Every published snapshot must be consistent
    (`Snapshot.check_consistent`); an inconsistent one raises
    `InconsistentSnapshotError` and changes nothing.
    """

    def __init__(self, *, clock: Clock = time.monotonic) -> None:
        self.clock = clock
        self._default: CacheEntry | None = None
        self._nodes: dict[str, CacheEntry] = {}
        self._watches: dict[str, set[Watch]] = {}

    def set_snapshot(self, node_id: str, snapshot: Snapshot) -> CacheEntry:
        """Publishes `snapshot` to one node and notifies its open streams; returns the node's new entry."""
        snapshot.check_consistent()
        entry = self._derive(self.entry(node_id), snapshot)
        self._nodes[node_id] = entry
        self._notify(node_id)
        return entry

    def set_default(self, snapshot: Snapshot) -> CacheEntry:
        """Publishes `snapshot` to every node without a snapshot of its own."""
        snapshot.check_consistent()
        self._default = self._derive(self._default, snapshot)
        for node_id in list(self._watches):
            if node_id not in self._nodes:
                self._notify(node_id)
        return self._default

    def clear_snapshot(self, node_id: str) -> None:
        """Drops a node's own snapshot; the node falls back to the default (if any)."""
        if self._nodes.pop(node_id, None) is not None:
            self._notify(node_id)

    def get(self, node_id: str) -> Snapshot | None:
        """The snapshot a node should have now, or None when there is none yet."""
        entry = self.entry(node_id)
        return entry.snapshot if entry is not None else None

    def entry(self, node_id: str) -> CacheEntry | None:
        """The node's effective entry (its own, else the default), with per-type versions."""
        return self._nodes.get(node_id, self._default)

    def default(self) -> Snapshot | None:
        return self._default.snapshot if self._default is not None else None

    def node_ids(self) -> list[str]:
        """Nodes that have a snapshot of their own."""
        return sorted(self._nodes)

    def watch(self, node_id: str, callback: Callable[[], None]) -> Watch:
        """Calls `callback()` (synchronously, inside `set_*`) whenever the node's effective entry changes."""
        handle = Watch(self, node_id, callback)
        self._watches.setdefault(node_id, set()).add(handle)
        return handle

    def watch_count(self, node_id: str | None = None) -> int:
        if node_id is not None:
            return len(self._watches.get(node_id, ()))
        return sum(len(w) for w in self._watches.values())

    def _remove_watch(self, handle: Watch) -> None:
        watches = self._watches.get(handle.node_id)
        if watches is None:
            return
        watches.discard(handle)
        if not watches:
            del self._watches[handle.node_id]

    def _notify(self, node_id: str) -> None:
        for handle in list(self._watches.get(node_id, ())):
            handle.notify()

    def _derive(self, previous: CacheEntry | None, snapshot: Snapshot) -> CacheEntry:
        now = self.clock()
        versions: dict[str, str] = {}
        published: dict[str, float] = {}
        for type_url in RESOURCE_TYPES:
            if previous is not None and previous.snapshot.digest(type_url) == snapshot.digest(type_url):
                versions[type_url] = previous.version(type_url)
                published[type_url] = previous.published_at.get(type_url, now)
            else:
                versions[type_url] = snapshot.version
                published[type_url] = now
        return CacheEntry(snapshot, MappingProxyType(versions), MappingProxyType(published))
