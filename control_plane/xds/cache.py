"""Which snapshot each node should have, with per-type versions and change watches.

The narrow interface between translation and serving (go-control-plane's
`SnapshotCache`): the translator calls `set_snapshot(node_id, snapshot)`,
`set_group(prefix, snapshot)` or `set_default(snapshot)`; the ADS server reads
`entry(node_id)` and registers a `watch(node_id, callback)` per open stream,
so a stream learns that its node's resources changed without polling.

A node's snapshot is its own if one was set, else that of the longest group
prefix its id starts with, else the default. Groups give one kind of consumer
resources of its own: Envoy gateways (node ids `gateway~<name>`) subscribe to
every listener and must not get the sidecars' inbound listeners.

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
    """Snapshots per node id, per node-id prefix (group) and a default, and watches on them.

    A node's effective entry is its own snapshot if one was set, otherwise
    that of the longest group prefix of its id, otherwise the default. Every
    published snapshot must be consistent
    (`Snapshot.check_consistent`); an inconsistent one raises
    `InconsistentSnapshotError` and changes nothing.
    """

    def __init__(self, *, clock: Clock = time.monotonic) -> None:
        self.clock = clock
        self._default: CacheEntry | None = None
        self._nodes: dict[str, CacheEntry] = {}
        self._groups: dict[str, CacheEntry] = {}
        self._watches: dict[str, set[Watch]] = {}

    def set_snapshot(self, node_id: str, snapshot: Snapshot) -> CacheEntry:
        """Publishes `snapshot` to one node and notifies its open streams; returns the node's new entry."""
        snapshot.check_consistent()
        entry = self._derive(self.entry(node_id), snapshot)
        self._nodes[node_id] = entry
        self._notify(node_id)
        return entry

    def set_group(self, prefix: str, snapshot: Snapshot) -> CacheEntry:
        """Publishes `snapshot` to every node whose id starts with `prefix` and that has no snapshot of its own.

        When several group prefixes match a node id, the longest wins.
        """
        if not prefix:
            raise ValueError("a group needs a non-empty node id prefix (set_default covers every node)")
        snapshot.check_consistent()
        entry = self._groups[prefix] = self._derive(self._groups.get(prefix), snapshot)
        for node_id in list(self._watches):
            if node_id not in self._nodes and self._group_of(node_id) == prefix:
                self._notify(node_id)
        return entry

    def clear_group(self, prefix: str) -> None:
        """Drops a group; its nodes fall back to a shorter matching group or the default."""
        if prefix not in self._groups:
            return
        members = [n for n in self._watches if n not in self._nodes and self._group_of(n) == prefix]
        del self._groups[prefix]
        for node_id in members:
            self._notify(node_id)

    def set_default(self, snapshot: Snapshot) -> CacheEntry:
        """Publishes `snapshot` to every node with neither a snapshot of its own nor a group."""
        snapshot.check_consistent()
        self._default = self._derive(self._default, snapshot)
        for node_id in list(self._watches):
            if node_id not in self._nodes and self._group_of(node_id) is None:
                self._notify(node_id)
        return self._default

    def clear_snapshot(self, node_id: str) -> None:
        """Drops a node's own snapshot; the node falls back to its group or the default (if any)."""
        if self._nodes.pop(node_id, None) is not None:
            self._notify(node_id)

    def get(self, node_id: str) -> Snapshot | None:
        """The snapshot a node should have now, or None when there is none yet."""
        entry = self.entry(node_id)
        return entry.snapshot if entry is not None else None

    def entry(self, node_id: str) -> CacheEntry | None:
        """The node's effective entry (its own, else its group's, else the default), with per-type versions."""
        own = self._nodes.get(node_id)
        if own is not None:
            return own
        group = self._group_of(node_id)
        return self._groups[group] if group is not None else self._default

    def default(self) -> Snapshot | None:
        return self._default.snapshot if self._default is not None else None

    def group(self, prefix: str) -> Snapshot | None:
        """The snapshot of the group `prefix`, or None when there is no such group."""
        entry = self._groups.get(prefix)
        return entry.snapshot if entry is not None else None

    def groups(self) -> list[str]:
        """Every group prefix, sorted."""
        return sorted(self._groups)

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

    def _group_of(self, node_id: str) -> str | None:
        """The longest group prefix `node_id` starts with, or None."""
        matching = [prefix for prefix in self._groups if node_id.startswith(prefix)]
        return max(matching, key=len) if matching else None

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
