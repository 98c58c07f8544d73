"""Passive health: ejects endpoints whose results stand out, as Envoy's outlier detection does.

Outbound path: every finished attempt is `record`ed against its endpoint;
`sweep` runs every `interval` (cluster `outlier_detection`). The detector
only ejects: an ejection sets `EndpointState.ejected_until`, and the
endpoint is a candidate again once that time has passed (Envoy un-ejects at
the next sweep after it; here the time alone decides, so no sweep is needed
to bring an endpoint back).

What it implements of config.cluster.v3.OutlierDetection:

- consecutive errors (`consecutive_5xx`, `enforcing_consecutive_5xx`): the
  N-th error in a row ejects at once. An error is a status Envoy would
  count as a 5xx: the gRPC codes its grpc-to-HTTP mapping turns into 5xx
  (`ERROR_CODES`: UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL,
  UNAVAILABLE, DATA_LOSS), plus transport failures the caller reports as
  UNAVAILABLE. Any other result (OK, INVALID_ARGUMENT, NOT_FOUND, ...) is a
  success: the endpoint answered.
- success rate (`success_rate_*`, `enforcing_success_rate`), at each sweep:
  among endpoints not ejected with at least `request_volume` results in the
  last interval, when there are at least `minimum_hosts`, those whose success
  rate is below `mean - stdev_factor/1000 * stdev` (population stdev) are ejected.
- ejection time: `base_ejection_time * backoff`, at most `max_ejection_time`;
  the backoff grows by one per ejection and shrinks by one for each interval
  the endpoint stays in service.
- `max_ejection_percent`: an ejection happens only if the ejected share,
  this one included, stays within the percentage (so one endpoint of N can be
  ejected once the percentage reaches 100/N).
- `enforcing_*`: the percent chance a detected outlier is really ejected.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import grpc

from sidecar.config.snapshot import OutlierDetection
from sidecar.outbound.balancer import EndpointState

log = logging.getLogger("agentmesh.sidecar.outbound")

# gRPC codes Envoy's outlier detection counts as 5xx (Grpc::Utility::grpcToHttpStatus >= 500).
ERROR_CODES: frozenset[grpc.StatusCode] = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)


def is_error(code: grpc.StatusCode) -> bool:
    """Whether an attempt ending with `code` counts against its endpoint."""
    return code in ERROR_CODES


@dataclass(frozen=True)
class Sweep:
    """What one sweep changed: addresses newly ejected and addresses back in service."""

    ejected: tuple[str, ...] = ()
    returned: tuple[str, ...] = ()


class OutlierDetector:
    """Outlier detection for one cluster's endpoints (see the module docstring for the rules)."""

    def __init__(
        self,
        config: OutlierDetection,
        endpoints: Sequence[EndpointState] = (),
        *,
        rand: Callable[[], float] = random.random,
        cluster: str = "",
    ) -> None:
        self.config = config
        self._endpoints: Sequence[EndpointState] = endpoints
        self._rand = rand
        self._cluster = cluster
        self.next_sweep: float | None = None
        # Ejections refused because max_ejection_percent was reached (Envoy's ejections_overflow).
        self.overflows = 0

    def __repr__(self) -> str:
        return f"OutlierDetector({self._cluster!r}, {self.config!r})"

    def track(self, endpoints: Sequence[EndpointState]) -> None:
        """The cluster's endpoints changed (EDS); their states carry their history."""
        self._endpoints = endpoints

    def ejected_count(self, now: float) -> int:
        return sum(1 for e in self._endpoints if e.ejected(now))

    def record(self, endpoint: EndpointState, success: bool, now: float) -> bool:
        """Feeds one attempt's result; returns True when it got the endpoint ejected."""
        self._return_if_due(endpoint, now)
        endpoint.interval_requests += 1
        if success:
            endpoint.interval_successes += 1
            endpoint.consecutive_errors = 0
            return False
        if endpoint.ejected(now):
            # Results of attempts to an ejected endpoint (in flight, or panic mode) don't eject it again.
            return False
        endpoint.consecutive_errors += 1
        threshold = self.config.consecutive_errors
        if threshold <= 0 or endpoint.consecutive_errors < threshold:
            return False
        endpoint.consecutive_errors = 0
        return self._eject(endpoint, now, self.config.enforcing_consecutive_errors, "consecutive errors")

    def due(self, now: float) -> bool:
        return self.next_sweep is None or now >= self.next_sweep

    def sweep(self, now: float) -> Sweep:
        """The periodic pass: returns ejected endpoints whose time is up, success-rate ejections, backoff decay."""
        returned = tuple(e.address for e in self._endpoints if self._return_if_due(e, now))
        ejected = self._success_rate(now) if self.config.enforcing_success_rate > 0 else ()
        for endpoint in self._endpoints:
            endpoint.interval_requests = 0
            endpoint.interval_successes = 0
            if (
                endpoint.ejection_backoff > 0
                and not endpoint.ejected(now)
                and endpoint.returned_at is not None
                and now - endpoint.returned_at >= self.config.interval
            ):
                endpoint.ejection_backoff -= 1
        self.next_sweep = now + self.config.interval
        return Sweep(ejected=ejected, returned=returned)

    def _success_rate(self, now: float) -> tuple[str, ...]:
        config = self.config
        rates = [
            (e, 100.0 * e.interval_successes / e.interval_requests)
            for e in self._endpoints
            if not e.ejected(now) and e.interval_requests and e.interval_requests >= config.success_rate_request_volume
        ]
        if not rates or len(rates) < config.success_rate_minimum_hosts:
            return ()
        mean = sum(rate for _, rate in rates) / len(rates)
        stdev = math.sqrt(sum((rate - mean) ** 2 for _, rate in rates) / len(rates))
        threshold = mean - config.success_rate_stdev_factor / 1000.0 * stdev
        return tuple(
            e.address
            for e, rate in rates
            if rate < threshold
            and self._eject(e, now, config.enforcing_success_rate, f"success rate {rate:.1f}% < {threshold:.1f}%")
        )

    def _return_if_due(self, endpoint: EndpointState, now: float) -> bool:
        """Bookkeeping when an ejection has run out: counters start afresh, as after Envoy's un-ejection."""
        if endpoint.ejected_until is None or now < endpoint.ejected_until:
            return False
        endpoint.returned_at = endpoint.ejected_until
        endpoint.ejected_until = None
        endpoint.consecutive_errors = 0
        return True

    def _eject(self, endpoint: EndpointState, now: float, enforcing: int, why: str) -> bool:
        total = len(self._endpoints)
        if total == 0:
            return False
        if 100.0 * (self.ejected_count(now) + 1) / total > self.config.max_ejection_percent:
            self.overflows += 1
            log.warning(
                "cluster %s: endpoint %s is an outlier (%s) but max_ejection_percent %d%% is reached",
                self._cluster,
                endpoint.address,
                why,
                self.config.max_ejection_percent,
            )
            return False
        if enforcing < 100 and self._rand() * 100.0 >= enforcing:
            return False
        base = self.config.base_ejection_time
        longest = max(self.config.max_ejection_time, base)
        if endpoint.ejection_backoff * base < longest + base:
            endpoint.ejection_backoff += 1
        endpoint.ejected_until = now + min(base * endpoint.ejection_backoff, longest)
        endpoint.times_ejected += 1
        log.warning(
            "cluster %s: endpoint %s ejected for %.1fs (%s)",
            self._cluster,
            endpoint.address,
            endpoint.ejected_until - now,
            why,
        )
        return True
