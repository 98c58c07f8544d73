"""Weighted backend choice: which cluster of a route's `weighted_clusters` an outbound call goes to.

Outbound path: route (router.py) → **weighted cluster** → cluster → endpoint.
This is how canary splits happen (`agent/researcher/v1` 90, `.../v2` 10).

Envoy's semantics (config.route.v3.WeightedCluster): the total weight is the
sum of the entries; a value is drawn in [0, total) and the first entry whose
running sum exceeds it wins, so a zero-weight entry is never chosen. With a
hash policy (`RouteAction.hash_header`, sticky sessions) and the header
present, the value is `hash(header value) mod total` instead: the same value
always picks the same cluster, across calls and processes. The hash is
BLAKE2b (stable and well spread, unlike Python's per-process `hash`).
Header names match case-insensitively; metadata keys are lower-case.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping

from sidecar.config.snapshot import RouteAction
from sidecar.errors import NoRoute


def stable_hash(value: str) -> int:
    """A 64-bit hash of `value` that is the same in every process."""
    return int.from_bytes(hashlib.blake2b(value.encode(), digest_size=8).digest(), "big")


def pick_cluster(action: RouteAction, headers: Mapping[str, str], *, rand: Callable[[], float]) -> str:
    """The cluster name this call goes to. `headers` have lower-case keys; `rand` is uniform in [0, 1)."""
    clusters = action.clusters
    if len(clusters) == 1:
        return clusters[0].name
    total = action.total_weight
    if total <= 0:
        raise NoRoute(f"no cluster of {', '.join(c.name for c in clusters) or 'the route'} has a weight")
    value = headers.get(action.hash_key) if action.hash_key is not None else None
    selected = stable_hash(value) % total if value is not None else min(int(rand() * total), total - 1)
    running = 0
    for cluster in clusters:
        running += cluster.weight
        if selected < running:
            return cluster.name
    raise AssertionError("unreachable: selected < total")
