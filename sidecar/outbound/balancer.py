"""Endpoint choice within one cluster: the live state of each endpoint and the balancers over it.

Outbound path: route → weighted cluster → **load balancer** → attempt. A
`Balancer` picks one `EndpointState` from a cluster's endpoints; the cluster
state (endpoints.py) owns the endpoints and feeds them results.

Which endpoints a balancer may pick follows Envoy: endpoints that EDS reports
healthy and outlier detection has not ejected. When fewer than
`panic_threshold` percent of them qualify (Envoy's `healthy_panic_threshold`,
50 % by default), the cluster is in *panic* and every endpoint is a candidate,
healthy or not: better to spread load over a degraded cluster than to pile it
on the few endpoints left. With `panic_threshold=0` panic never happens and a
cluster without a healthy endpoint fails with `NoHealthyUpstream`.

Strategies (cluster `load_balancing_policy`):

- `LeastRequestBalancer` (envoy.load_balancing_policies.least_request):
  power of two choices by requests in flight when all weights are equal (two
  random draws, with replacement, as Envoy draws); with unequal weights an
  earliest-deadline-first schedule whose weights are `weight / (active + 1)`.
- `RoundRobinBalancer` (envoy.load_balancing_policies.round_robin): rotation,
  or a static-weight EDF schedule when weights differ.
- `PeakEwmaBalancer` (Finagle's and Linkerd's): power of two (distinct)
  choices by `peak-EWMA latency * (active + 1)`; an endpoint with requests in
  flight but no latency yet costs a large penalty. Weights are not used.

Randomness and the clock are injected; nothing here does I/O or locks: the
sidecar calls it from its one event loop.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from sidecar.errors import NoHealthyUpstream

DEFAULT_PANIC_THRESHOLD = 50.0
# Finagle and Linkerd decay a peak-EWMA estimate over 10 s.
DEFAULT_EWMA_DECAY = 10.0
# Load of an endpoint with requests in flight and no latency measured yet: above any real load.
EWMA_PENALTY = float(2**40)

Clock = Callable[[], float]
Random = Callable[[], float]


@dataclass
class PeakEwma:
    """A latency estimate that jumps to any slower sample and decays toward faster ones (and 0) over time.

    `cost` is in seconds; `stamp` is when it was last updated, None before the first sample.
    """

    decay: float = DEFAULT_EWMA_DECAY
    cost: float = 0.0
    stamp: float | None = None

    def observe(self, rtt: float, now: float) -> None:
        """Adds one latency sample taken at `now`."""
        if self.stamp is None or rtt > self.cost:
            self.cost = rtt
        else:
            weight = math.exp(-max(now - self.stamp, 0.0) / self.decay)
            self.cost = self.cost * weight + rtt * (1.0 - weight)
        self.stamp = now

    def current(self, now: float) -> float:
        """The estimate at `now`: reading decays it toward 0, so an idle slow endpoint gets retried in time."""
        if self.stamp is not None:
            self.observe(0.0, now)
        return self.cost


@dataclass(eq=False)
class EndpointState:
    """One endpoint's live state: EDS data, load, latency estimate and outlier-detection bookkeeping.

    Kept across EDS updates while the endpoint stays in the cluster, so its
    stats and ejection history survive config changes.
    """

    address: str
    healthy: bool = True
    weight: int = 1
    zone: str = ""
    # Attempts in flight to this endpoint.
    active: int = 0
    ewma: PeakEwma = field(default_factory=PeakEwma)
    # Outlier detection (written by outlier.OutlierDetector only).
    consecutive_errors: int = 0
    interval_requests: int = 0
    interval_successes: int = 0
    ejected_until: float | None = None
    returned_at: float | None = None
    # Envoy's ejection-time multiplier: grows with each ejection, shrinks each interval spent healthy.
    ejection_backoff: int = 0
    times_ejected: int = 0

    def forget_ejections(self) -> None:
        """Back to a host never ejected (the cluster was rebuilt)."""
        self.consecutive_errors = 0
        self.ejected_until = None
        self.returned_at = None
        self.ejection_backoff = 0
        self.times_ejected = 0

    def ejected(self, now: float) -> bool:
        return self.ejected_until is not None and now < self.ejected_until

    def available(self, now: float) -> bool:
        """Healthy per EDS and not ejected: a candidate outside panic."""
        return self.healthy and not self.ejected(now)

    def __repr__(self) -> str:
        return f"EndpointState({self.address!r}, healthy={self.healthy}, weight={self.weight}, active={self.active})"


class Balancer(Protocol):
    """Picks the endpoint for one attempt; raises NoHealthyUpstream when there is none to pick."""

    @property
    def panic(self) -> bool:
        """Whether the last pick was made in panic mode (too few healthy endpoints)."""
        ...

    def pick(self, endpoints: Sequence[EndpointState]) -> EndpointState: ...


def candidates(
    endpoints: Sequence[EndpointState], now: float, panic_threshold: float
) -> tuple[Sequence[EndpointState], bool]:
    """The endpoints a balancer may pick from, and whether the cluster is in panic.

    Envoy's rule for one priority level: panic when fewer than
    `panic_threshold` percent of endpoints are available; then all are
    candidates. Raises NoHealthyUpstream when nothing can be picked.
    """
    if not endpoints:
        raise NoHealthyUpstream("no endpoints")
    available = [e for e in endpoints if e.available(now)]
    if len(available) == len(endpoints):
        return endpoints, False
    if 100.0 * len(available) / len(endpoints) < panic_threshold:
        return endpoints, True
    if not available:
        raise NoHealthyUpstream(f"none of {len(endpoints)} endpoints is healthy and panic mode is off")
    return available, False


def _index(rand: Random, size: int) -> int:
    return min(int(rand() * size), size - 1)


def _weights_equal(endpoints: Sequence[EndpointState]) -> bool:
    first = endpoints[0].weight
    return all(e.weight == first for e in endpoints)


class _Edf:
    """Earliest-deadline-first schedule (Envoy's EdfScheduler): each pick takes the smallest deadline,
    then moves it on by 1/weight, so picks are proportional to weight and evenly interleaved.

    Restarts whenever the candidate set changes, as Envoy rebuilds its scheduler on host changes.
    """

    def __init__(self) -> None:
        self._members: tuple[int, ...] = ()
        self._deadlines: dict[int, float] = {}

    def pick(self, endpoints: Sequence[EndpointState], weight: Callable[[EndpointState], float]) -> EndpointState:
        members = tuple(id(e) for e in endpoints)
        if members != self._members:
            self._members = members
            self._deadlines = {id(e): 1.0 / max(weight(e), 1e-9) for e in endpoints}
        chosen = min(endpoints, key=lambda e: self._deadlines[id(e)])
        self._deadlines[id(chosen)] += 1.0 / max(weight(chosen), 1e-9)
        return chosen


class _Base:
    def __init__(self, *, rand: Random, clock: Clock, panic_threshold: float) -> None:
        self._rand = rand
        self._clock = clock
        self._panic_threshold = panic_threshold
        self._panic = False

    @property
    def panic(self) -> bool:
        return self._panic

    def pick(self, endpoints: Sequence[EndpointState]) -> EndpointState:
        now = self._clock()
        pool, self._panic = candidates(endpoints, now, self._panic_threshold)
        if len(pool) == 1:
            return pool[0]
        return self._choose(pool, now)

    def _choose(self, pool: Sequence[EndpointState], now: float) -> EndpointState:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(panic_threshold={self._panic_threshold})"


class LeastRequestBalancer(_Base):
    """Envoy's least_request with choice_count 2 and active_request_bias 1."""

    def __init__(
        self,
        *,
        rand: Random = random.random,
        clock: Clock = time.monotonic,
        panic_threshold: float = DEFAULT_PANIC_THRESHOLD,
    ) -> None:
        super().__init__(rand=rand, clock=clock, panic_threshold=panic_threshold)
        self._edf = _Edf()

    def _choose(self, pool: Sequence[EndpointState], now: float) -> EndpointState:
        if not _weights_equal(pool):
            return self._edf.pick(pool, lambda e: e.weight / (e.active + 1))
        first = pool[_index(self._rand, len(pool))]
        second = pool[_index(self._rand, len(pool))]
        # Strictly fewer requests replaces the first draw; ties keep it (as Envoy).
        return second if second.active < first.active else first


class RoundRobinBalancer(_Base):
    """Envoy's round_robin: rotation over the candidates, EDF by weight when weights differ."""

    def __init__(
        self,
        *,
        rand: Random = random.random,
        clock: Clock = time.monotonic,
        panic_threshold: float = DEFAULT_PANIC_THRESHOLD,
    ) -> None:
        super().__init__(rand=rand, clock=clock, panic_threshold=panic_threshold)
        self._next = 0
        self._edf = _Edf()

    def _choose(self, pool: Sequence[EndpointState], now: float) -> EndpointState:
        if not _weights_equal(pool):
            return self._edf.pick(pool, lambda e: float(e.weight))
        chosen = pool[self._next % len(pool)]
        self._next += 1
        return chosen


class PeakEwmaBalancer(_Base):
    """Power of two distinct choices by peak-EWMA cost (Finagle's PeakEwma, Linkerd's balancer)."""

    def __init__(
        self,
        *,
        rand: Random = random.random,
        clock: Clock = time.monotonic,
        panic_threshold: float = DEFAULT_PANIC_THRESHOLD,
    ) -> None:
        super().__init__(rand=rand, clock=clock, panic_threshold=panic_threshold)

    @staticmethod
    def load(endpoint: EndpointState, now: float) -> float:
        """Cost of sending one more request: latency estimate * (requests in flight + 1)."""
        cost = endpoint.ewma.current(now)
        if cost == 0.0 and endpoint.active:
            return EWMA_PENALTY + endpoint.active
        return cost * (endpoint.active + 1)

    def _choose(self, pool: Sequence[EndpointState], now: float) -> EndpointState:
        a = _index(self._rand, len(pool))
        b = _index(self._rand, len(pool) - 1)
        if b >= a:
            b += 1
        first, second = pool[a], pool[b]
        return second if self.load(second, now) < self.load(first, now) else first
