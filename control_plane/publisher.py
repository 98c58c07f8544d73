"""Rebuilds the xDS snapshot when policy or the registry changes, and publishes it.

Two snapshots per change, with one version: the mesh's (the cache default:
sidecars, proxyless clients) and the gateway's (the group of node ids starting
with `gateway~`: Envoy at the edge, control_plane.translate.gateway). The
trust domain names the SPIFFE IDs clusters reached over mTLS expect; with
`gateway_mtls` the gateway's listener requires client certificates.

Changes are coalesced: a burst of registrations or a policy apply becomes one
translation. Translation is pure (control_plane.translate); the snapshot is
checked for consistency before it is published, and a failure keeps the last
good snapshot serving (and is logged and counted).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge

from agentmesh.identity.spiffe import DEFAULT_TRUST_DOMAIN
from control_plane.policy.store import PolicySet
from control_plane.registry import Registry
from control_plane.registry.view import mesh_view
from control_plane.translate import DEFAULT_GATEWAY_PORT, GATEWAY_NODE_PREFIX, translate, translate_gateway
from control_plane.xds.cache import SnapshotCache
from control_plane.xds.snapshot import Snapshot

log = logging.getLogger("agentmesh.control_plane.publisher")

DEFAULT_COALESCE = 0.05


class SnapshotPublisher:
    """Owns the translate → publish loop."""

    def __init__(
        self,
        *,
        policies: Callable[[], PolicySet],
        registry: Registry,
        cache: SnapshotCache,
        metrics: CollectorRegistry,
        coalesce: float = DEFAULT_COALESCE,
        gateway_port: int = DEFAULT_GATEWAY_PORT,
        trust_domain: str = DEFAULT_TRUST_DOMAIN,
        gateway_mtls: bool = False,
    ) -> None:
        self._policies = policies
        self._registry = registry
        self._cache = cache
        self._coalesce = coalesce
        self._gateway_port = gateway_port
        self._trust_domain = trust_domain
        self._gateway_mtls = gateway_mtls
        self._dirty = asyncio.Event()
        self._generation = 0
        self.version = ""
        self._policy_version = Gauge(
            "agentmesh_cp_policy_version", "Mesh-wide policy version being served.", registry=metrics
        )
        self._failures = Counter(
            "agentmesh_cp_translation_failures_total",
            "Snapshots that could not be built; the previous one keeps serving.",
            registry=metrics,
        )
        self._translate_seconds = Gauge(
            "agentmesh_cp_last_translation_seconds", "Time the last translation took.", registry=metrics
        )
        registry.subscribe(lambda _change: self.mark_dirty())

    def mark_dirty(self) -> None:
        self._dirty.set()

    def publish_now(self) -> None:
        """Translates and publishes synchronously (start-up, tests)."""
        started = time.perf_counter()
        try:
            policy_set = self._policies()
            mesh = mesh_view(self._registry)
            resources = translate(policy_set.policies, mesh, trust_domain=self._trust_domain)
            gateway = translate_gateway(
                policy_set.policies,
                mesh,
                port=self._gateway_port,
                trust_domain=self._trust_domain,
                downstream_mtls=self._gateway_mtls,
                mesh_resources=resources,
            )
            self._generation += 1
            version = f"p{policy_set.version}-g{self._generation}"
            snapshot = Snapshot.from_resources(version, (message for _, _, message in resources))
            gateway_snapshot = Snapshot.from_resources(version, (message for _, _, message in gateway))
            # Both or neither: check the gateway's before the default goes out.
            gateway_snapshot.check_consistent()
            self._cache.set_default(snapshot)
            self._cache.set_group(GATEWAY_NODE_PREFIX, gateway_snapshot)
        except Exception:
            self._failures.inc()
            log.exception("cannot publish a new snapshot; the previous one keeps serving")
            return
        self.version = version
        self._policy_version.set(policy_set.version)
        self._translate_seconds.set(time.perf_counter() - started)
        for note in dict.fromkeys((*resources.notes, *gateway.notes)):
            log.warning("translation: %s", note)
        log.info(
            "published snapshot",
            extra={"version": version, "resources": sum(1 for _ in resources), "policy_version": policy_set.version},
        )

    async def run(self) -> None:
        """Publishes after each burst of changes until cancelled."""
        while True:
            await self._dirty.wait()
            await asyncio.sleep(self._coalesce)
            self._dirty.clear()
            self.publish_now()
