"""Retries: the retry decision, jittered exponential back-off and the retry budget."""

from __future__ import annotations

import random

import grpc
import pytest

from sidecar.config.snapshot import CircuitBreakers, RetryPolicy
from sidecar.outbound.retry import RetryBudget, backoff, retry_reason, should_retry

UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
POLICY = RetryPolicy(
    retry_on=frozenset({UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}),
    num_retries=2,
    per_try_timeout=1.0,
    backoff_base=0.025,
    backoff_max=0.25,
)


def test_retries_only_listed_codes() -> None:
    assert should_retry(POLICY, UNAVAILABLE, attempt=1, idempotent=True)
    assert should_retry(POLICY, grpc.StatusCode.DEADLINE_EXCEEDED, attempt=1, idempotent=True)
    assert not should_retry(POLICY, grpc.StatusCode.INTERNAL, attempt=1, idempotent=True)
    assert not should_retry(POLICY, grpc.StatusCode.INVALID_ARGUMENT, attempt=1, idempotent=True)


def test_no_policy_no_retry() -> None:
    assert not should_retry(None, UNAVAILABLE, attempt=1, idempotent=True)


def test_at_most_num_retries() -> None:
    decisions = [should_retry(POLICY, UNAVAILABLE, attempt=n, idempotent=True) for n in (1, 2, 3, 4)]
    assert decisions == [True, True, False, False]


def test_non_idempotent_skills_only_when_allowed() -> None:
    assert not should_retry(POLICY, UNAVAILABLE, attempt=1, idempotent=False)
    assert should_retry(POLICY, UNAVAILABLE, attempt=1, idempotent=False, allow_non_idempotent=True)


def test_never_after_the_response_started() -> None:
    assert not should_retry(POLICY, UNAVAILABLE, attempt=1, idempotent=True, response_started=True)


def test_backoff_is_full_jitter_exponential_and_capped() -> None:
    ceilings = {1: 0.025, 2: 0.05, 3: 0.1, 4: 0.2, 5: 0.25, 6: 0.25, 200: 0.25}
    for attempt, ceiling in ceilings.items():
        assert backoff(attempt, POLICY, lambda: 0.0) == 0.0
        assert backoff(attempt, POLICY, lambda: 0.5) == pytest.approx(ceiling / 2)
        assert backoff(attempt, POLICY, lambda: 0.999999) < ceiling
    rand = random.Random(5).random
    waits = [backoff(3, POLICY, rand) for _ in range(2000)]
    assert all(0.0 <= w < 0.1 for w in waits)
    assert max(waits) > 0.09 and min(waits) < 0.01  # spread over the whole range


def test_backoff_of_attempt_zero_is_treated_as_the_first() -> None:
    assert backoff(0, POLICY, lambda: 0.5) == pytest.approx(0.0125)


def test_budget_allows_min_concurrency_when_idle() -> None:
    budget = RetryBudget(budget_percent=20.0, min_retry_concurrency=3)
    assert [budget.try_acquire(0) for _ in range(4)] == [True, True, True, False]
    assert budget.active == 3 and budget.overflows == 1


def test_budget_grows_with_active_requests() -> None:
    budget = RetryBudget(budget_percent=20.0, min_retry_concurrency=3)
    assert budget.limit(100) == 20
    assert budget.limit(14) == 3  # 2.8 is less than the minimum
    granted = sum(budget.try_acquire(100) for _ in range(30))
    assert granted == 20


def test_released_slots_can_be_taken_again() -> None:
    budget = RetryBudget(budget_percent=20.0, min_retry_concurrency=1)
    assert budget.try_acquire(0)
    assert not budget.try_acquire(0)
    budget.release()
    assert budget.try_acquire(0)
    budget.release()
    budget.release()  # an extra release never goes below zero
    assert budget.active == 0


def test_without_a_budget_max_retries_applies() -> None:
    budget = RetryBudget.from_breakers(CircuitBreakers(max_retries=2, retry_budget_percent=None))
    assert [budget.try_acquire(1000) for _ in range(3)] == [True, True, False]


def test_budget_follows_cluster_updates() -> None:
    budget = RetryBudget.from_breakers(CircuitBreakers(retry_budget_percent=50.0, min_retry_concurrency=0))
    assert budget.limit(10) == 5
    budget.configure(CircuitBreakers(retry_budget_percent=10.0, min_retry_concurrency=0))
    assert budget.limit(10) == 1
    assert "budget_percent=10.0" in repr(budget)


def test_retry_reason_labels() -> None:
    assert retry_reason(UNAVAILABLE) == "unavailable"
    assert retry_reason(grpc.StatusCode.RESOURCE_EXHAUSTED) == "resource_exhausted"
