"""Retries: whether a failed attempt may be retried, how long to wait first, and the retry budget.

Outbound path: after an attempt fails, the forwarder asks `should_retry`
(the route's RetryPolicy, plain data from config.route.v3.RetryPolicy), then
takes a slot from the cluster's `RetryBudget`; no slot means no retry, the
caller gets the failure it already has. Before the retry it sleeps
`backoff(...)`. Decisions follow Envoy's router:

- only status codes in `retry_on`, and at most `num_retries` retries;
- never once the first response message of a stream was passed on (Envoy:
  never after the downstream response started);
- skills not marked idempotent only when the policy allows it (the control
  plane leaves retries off their routes; `should_retry` can also guard with
  the skill metadata from the contract);
- a per-try timeout is not retried: Envoy retries it only for the HTTP
  conditions `5xx`/`gateway-error`/`reset`, which a gRPC-flavoured policy
  cannot name, and answers UNAVAILABLE (the egress does the same).

Back-off is Envoy's fully jittered exponential: a uniform wait in
[0, min(base * 2^(n-1), max)) before retry n.
"""

from __future__ import annotations

from collections.abc import Callable

import grpc

from sidecar.config.snapshot import CircuitBreakers, RetryPolicy


class RetryBudget:
    """Concurrent retries allowed for one cluster, shared by every call to it.

    With a budget (CircuitBreakers.Thresholds.retry_budget), retries in flight
    may reach `max(min_retry_concurrency, budget_percent % of active requests)`;
    without one, Envoy's fixed `max_retries` threshold applies.
    """

    def __init__(
        self, *, budget_percent: float | None = None, min_retry_concurrency: int = 3, max_retries: int = 3
    ) -> None:
        self.budget_percent = budget_percent
        self.min_retry_concurrency = min_retry_concurrency
        self.max_retries = max_retries
        # Retries in flight.
        self.active = 0
        # Retries refused for want of budget (Envoy's upstream_rq_retry_overflow).
        self.overflows = 0

    @classmethod
    def from_breakers(cls, breakers: CircuitBreakers) -> RetryBudget:
        budget = cls()
        budget.configure(breakers)
        return budget

    def configure(self, breakers: CircuitBreakers) -> None:
        """New limits from a cluster update; retries in flight keep their slots."""
        self.budget_percent = breakers.retry_budget_percent
        self.min_retry_concurrency = breakers.min_retry_concurrency
        self.max_retries = breakers.max_retries

    def limit(self, active_requests: int) -> int:
        """How many retries may be in flight while `active_requests` requests are."""
        if self.budget_percent is None:
            return self.max_retries
        return max(self.min_retry_concurrency, int(self.budget_percent / 100.0 * active_requests))

    def try_acquire(self, active_requests: int) -> bool:
        """Takes a retry slot if the budget allows; False means: do not retry."""
        if self.active >= self.limit(active_requests):
            self.overflows += 1
            return False
        self.active += 1
        return True

    def release(self) -> None:
        """Returns a slot when the retry attempt ends."""
        self.active = max(self.active - 1, 0)

    def __repr__(self) -> str:
        if self.budget_percent is None:
            return f"RetryBudget(max_retries={self.max_retries}, active={self.active})"
        return (
            f"RetryBudget(budget_percent={self.budget_percent}, min_retry_concurrency={self.min_retry_concurrency}, "
            f"active={self.active})"
        )


def should_retry(
    policy: RetryPolicy | None,
    code: grpc.StatusCode,
    *,
    attempt: int,
    idempotent: bool,
    allow_non_idempotent: bool = False,
    response_started: bool = False,
) -> bool:
    """Whether an attempt that failed with `code` may be retried (the budget is asked separately).

    `attempt` counts the attempts made so far, the failed one included (1 after the first).
    """
    if policy is None or response_started or code not in policy.retry_on:
        return False
    if not (idempotent or allow_non_idempotent):
        return False
    return attempt < policy.num_retries + 1


def backoff(attempt: int, policy: RetryPolicy, rand: Callable[[], float]) -> float:
    """Seconds to wait before the retry that follows attempt number `attempt` (1-based)."""
    ceiling = min(policy.backoff_base * 2.0 ** min(max(attempt, 1) - 1, 62), policy.backoff_max)
    return rand() * ceiling


def retry_reason(code: grpc.StatusCode) -> str:
    """The `reason` label for agentmesh_retries_total: the retry_on name of the status (`unavailable`)."""
    return code.name.lower()
