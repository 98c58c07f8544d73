"""Per-cluster live state: endpoints, balancer, outlier detector, circuit breaker and retry budget.

Outbound path: route → weighted cluster → **cluster state** → endpoint. The
config (Cluster, ClusterLoadAssignment) is frozen and swapped whole; the
state here lives across swaps. `ClusterStates.sync(snapshot)` follows each
new MeshSnapshot: clusters that stay keep their state, endpoints that stay
keep theirs (load, latency estimate, ejection history), new ones start
fresh, and removed ones go (attempts in flight on them finish harmlessly).

One attempt is:

    attempt = clusters.get(name).start()     # Overloaded, NoHealthyUpstream
    try: ... send to attempt.endpoint.address ...
    finally: attempt.finish(code)            # load, latency, outlier detection

Circuit breaking (CircuitBreakers.Thresholds, default priority): at most
`max_requests` attempts in flight per cluster; one more is refused with
`Overloaded` (Envoy's upstream overflow, UNAVAILABLE to gRPC callers).
`max_pending_requests` has no meaning here: the sidecar keeps no queue.

Everything runs on the sidecar's event loop; nothing here locks or does I/O.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator, Mapping

import grpc

from sidecar.config.snapshot import Cluster, ClusterEndpoints, LbPolicy, MeshSnapshot
from sidecar.errors import NoHealthyUpstream, NoRoute, Overloaded
from sidecar.outbound.balancer import (
    DEFAULT_PANIC_THRESHOLD,
    Balancer,
    EndpointState,
    LeastRequestBalancer,
    PeakEwmaBalancer,
    RoundRobinBalancer,
)
from sidecar.outbound.outlier import OutlierDetector, Sweep, is_error
from sidecar.outbound.retry import RetryBudget

log = logging.getLogger("agentmesh.sidecar.outbound")

Clock = Callable[[], float]
Random = Callable[[], float]

_BALANCERS: Mapping[LbPolicy, type[LeastRequestBalancer | RoundRobinBalancer | PeakEwmaBalancer]] = {
    "least_request": LeastRequestBalancer,
    "round_robin": RoundRobinBalancer,
    "peak_ewma": PeakEwmaBalancer,
}

__all__ = ["Attempt", "ClusterState", "ClusterStates", "EndpointState"]


class Attempt:
    """One attempt in flight on one endpoint; `finish` it exactly once (later calls do nothing)."""

    __slots__ = ("_done", "cluster", "endpoint", "started")

    def __init__(self, cluster: ClusterState, endpoint: EndpointState, started: float) -> None:
        self.cluster = cluster
        self.endpoint = endpoint
        self.started = started
        self._done = False

    def finish(self, code: grpc.StatusCode, *, latency: float | None = None) -> None:
        """Ends the attempt with the status the endpoint gave (UNAVAILABLE for a transport failure).

        `latency` defaults to the time since `start`; for streams pass the time
        to the first message. CANCELLED (the caller gave up) says nothing about
        the endpoint: neither latency nor outlier detection hear of it.
        """
        if self._done:
            return
        self._done = True
        self.cluster._finish(self, code, latency)

    def __repr__(self) -> str:
        return f"Attempt({self.cluster.name!r}, {self.endpoint.address!r})"


class ClusterState:
    """The live state of one cluster (config.cluster.v3.Cluster plus its ClusterLoadAssignment)."""

    def __init__(
        self,
        cluster: Cluster,
        endpoints: ClusterEndpoints | None = None,
        *,
        clock: Clock = time.monotonic,
        rand: Random = random.random,
        panic_threshold: float = DEFAULT_PANIC_THRESHOLD,
    ) -> None:
        self.name = cluster.name
        self._clock = clock
        self._rand = rand
        self._panic_threshold = panic_threshold
        self.config = cluster
        self.assignment = endpoints
        self.endpoints: tuple[EndpointState, ...] = ()
        self.balancer: Balancer = self._balancer(cluster.lb_policy)
        self.outlier: OutlierDetector | None = None
        self.retry_budget = RetryBudget.from_breakers(cluster.circuit_breakers)
        # Attempts in flight over all endpoints (the circuit breaker's count).
        self.active_requests = 0
        # Attempts refused by the circuit breaker (Envoy's upstream_rq_pending_overflow).
        self.overflows = 0
        self._in_panic = False
        self.update(cluster, endpoints)

    def __repr__(self) -> str:
        return f"ClusterState({self.name!r}, endpoints={len(self.endpoints)}, active={self.active_requests})"

    def _balancer(self, policy: LbPolicy) -> Balancer:
        return _BALANCERS[policy](rand=self._rand, clock=self._clock, panic_threshold=self._panic_threshold)

    def update(self, cluster: Cluster, endpoints: ClusterEndpoints | None) -> None:
        """Applies new config; endpoints that remain keep their state."""
        if cluster.lb_policy != self.config.lb_policy:
            self.balancer = self._balancer(cluster.lb_policy)
        if cluster.circuit_breakers != self.config.circuit_breakers:
            self.retry_budget.configure(cluster.circuit_breakers)
        # Envoy rebuilds a cluster on any change to it: its hosts lose their ejections.
        # An EDS-only change keeps the hosts that remain as they are.
        rebuilt = cluster != self.config
        self.config = cluster
        self.assignment = endpoints
        known = {e.address: e for e in self.endpoints}
        states = []
        for endpoint in endpoints.endpoints if endpoints is not None else ():
            state = known.pop(endpoint.address, None) or EndpointState(endpoint.address)
            if rebuilt:
                state.forget_ejections()
            state.healthy = endpoint.healthy
            state.weight = endpoint.weight
            state.zone = endpoint.zone
            states.append(state)
        self.endpoints = tuple(states)
        if cluster.outlier is None:
            self.outlier = None
        elif self.outlier is None or self.outlier.config != cluster.outlier:
            self.outlier = OutlierDetector(cluster.outlier, self.endpoints, rand=self._rand, cluster=self.name)
        else:
            self.outlier.track(self.endpoints)

    @property
    def panic(self) -> bool:
        """Whether the last pick found too few healthy endpoints and balanced over all of them."""
        return self.balancer.panic

    def healthy_count(self) -> int:
        """Endpoints healthy per EDS and not ejected now."""
        now = self._clock()
        return sum(1 for e in self.endpoints if e.available(now))

    def start(self) -> Attempt:
        """Admits one attempt (circuit breaker) and picks its endpoint."""
        limit = self.config.circuit_breakers.max_requests
        if self.active_requests >= limit:
            self.overflows += 1
            raise Overloaded(f"cluster {self.name}: {self.active_requests} requests in flight, max_requests is {limit}")
        try:
            endpoint = self.balancer.pick(self.endpoints)
        except NoHealthyUpstream as exc:
            raise NoHealthyUpstream(f"cluster {self.name}: {exc.message}") from exc
        if self.balancer.panic != self._in_panic:
            self._in_panic = self.balancer.panic
            if self._in_panic:
                log.warning(
                    "cluster %s: %d of %d endpoints healthy, below the panic threshold %g%%: balancing over all",
                    self.name,
                    self.healthy_count(),
                    len(self.endpoints),
                    self._panic_threshold,
                )
            else:
                log.info("cluster %s: out of panic mode", self.name)
        self.active_requests += 1
        endpoint.active += 1
        return Attempt(self, endpoint, self._clock())

    def _finish(self, attempt: Attempt, code: grpc.StatusCode, latency: float | None) -> None:
        endpoint = attempt.endpoint
        self.active_requests = max(self.active_requests - 1, 0)
        endpoint.active = max(endpoint.active - 1, 0)
        if code == grpc.StatusCode.CANCELLED:
            return
        now = self._clock()
        endpoint.ewma.observe(latency if latency is not None else now - attempt.started, now)
        if self.outlier is not None:
            self.outlier.record(endpoint, not is_error(code), now)

    def try_retry(self) -> bool:
        """Takes a slot of this cluster's retry budget; `release_retry()` when that retry ends."""
        return self.retry_budget.try_acquire(self.active_requests)

    def release_retry(self) -> None:
        self.retry_budget.release()

    def sweep(self, now: float | None = None) -> Sweep | None:
        """The outlier detector's periodic pass when it is due; None when there is nothing to do."""
        if self.outlier is None:
            return None
        now = self._clock() if now is None else now
        if not self.outlier.due(now):
            return None
        return self.outlier.sweep(now)

    def describe(self) -> dict[str, object]:
        """For the admin endpoints (/clusters, /config_dump)."""
        now = self._clock()
        return {
            "name": self.name,
            "lb_policy": self.config.lb_policy,
            "active_requests": self.active_requests,
            "retries_in_flight": self.retry_budget.active,
            "panic": self.panic,
            "endpoints": [
                {
                    "address": e.address,
                    "healthy": e.healthy,
                    "weight": e.weight,
                    "zone": e.zone,
                    "active": e.active,
                    "ewma_seconds": e.ewma.cost,
                    "ejected_for": max(e.ejected_until - now, 0.0) if e.ejected_until is not None else 0.0,
                    "times_ejected": e.times_ejected,
                }
                for e in self.endpoints
            ],
        }


class ClusterStates:
    """Every cluster's live state, kept in step with the MeshSnapshot by `sync`."""

    def __init__(
        self,
        *,
        clock: Clock = time.monotonic,
        rand: Random = random.random,
        panic_threshold: float = DEFAULT_PANIC_THRESHOLD,
    ) -> None:
        self._clock = clock
        self._rand = rand
        self._panic_threshold = panic_threshold
        self._clusters: dict[str, ClusterState] = {}

    def __repr__(self) -> str:
        return f"ClusterStates({sorted(self._clusters)})"

    def sync(self, snapshot: MeshSnapshot) -> None:
        """Follows a new snapshot: adds, updates and removes cluster states."""
        clusters: dict[str, ClusterState] = {}
        for name, cluster in snapshot.clusters.items():
            assignment = snapshot.endpoints.get(name)
            state = self._clusters.get(name)
            if state is None:
                state = ClusterState(
                    cluster,
                    assignment,
                    clock=self._clock,
                    rand=self._rand,
                    panic_threshold=self._panic_threshold,
                )
            elif state.config is not cluster or state.assignment is not assignment:
                state.update(cluster, assignment)
            clusters[name] = state
        self._clusters = clusters

    def get(self, name: str) -> ClusterState:
        """The state of cluster `name`; raises NoRoute when the snapshot has no such cluster."""
        try:
            return self._clusters[name]
        except KeyError:
            raise NoRoute(f"cluster {name} is not known (yet): no CDS resource of that name") from None

    def __contains__(self, name: object) -> bool:
        return name in self._clusters

    def __iter__(self) -> Iterator[ClusterState]:
        return iter(list(self._clusters.values()))

    def __len__(self) -> int:
        return len(self._clusters)

    def sweep(self, now: float | None = None) -> dict[str, Sweep]:
        """Runs every outlier detector that is due; returns what changed, by cluster."""
        now = self._clock() if now is None else now
        changes = {}
        for state in list(self._clusters.values()):
            result = state.sweep(now)
            if result is not None and (result.ejected or result.returned):
                changes[state.name] = result
        return changes
