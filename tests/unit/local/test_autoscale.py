"""Autoscaler: up after consecutive busy checks, down one at a time after a longer quiet spell, within bounds."""

from __future__ import annotations

import pytest

from agentmesh.local.autoscale import Autoscaler, ScaleDecision


def scaler(minimum: int = 1, maximum: int = 3, target: float = 2.0) -> Autoscaler:
    return Autoscaler(minimum=minimum, maximum=maximum, target=target, up_checks=2, down_checks=5)


def test_scales_up_only_after_two_busy_checks_in_a_row() -> None:
    autoscaler = scaler()
    assert autoscaler.observe([5.0], 1) is None
    decision = autoscaler.observe([5.0], 1)
    assert decision is not None
    assert (decision.current, decision.desired, decision.direction) == (1, 3, "up")
    assert decision.average == 5.0
    assert "> target 2" in decision.reason


def test_a_calm_check_between_busy_ones_restarts_the_count() -> None:
    autoscaler = scaler()
    assert autoscaler.observe([5.0], 1) is None
    assert autoscaler.observe([1.5], 1) is None  # between target/2 and target: neither busy nor quiet
    assert autoscaler.observe([5.0], 1) is None
    assert autoscaler.observe([5.0], 1) is not None


def test_scale_up_adds_at_least_one_and_at_most_up_to_max() -> None:
    autoscaler = scaler(maximum=5)
    autoscaler.observe([2.5], 1)
    decision = autoscaler.observe([2.5], 1)  # ceil(2.5 / 2) = 2
    assert decision is not None and decision.desired == 2
    autoscaler.observe([40.0, 0.0], 2)
    decision = autoscaler.observe([40.0, 0.0], 2)
    assert decision is not None and decision.desired == 5


def test_no_scale_up_beyond_max() -> None:
    autoscaler = scaler(maximum=2)
    for _ in range(5):
        assert autoscaler.observe([10.0, 10.0], 2) is None


def test_scales_down_one_replica_after_five_quiet_checks() -> None:
    autoscaler = scaler()
    for _ in range(4):
        assert autoscaler.observe([0.0, 0.0, 0.0], 3) is None
    decision = autoscaler.observe([0.0, 0.0, 0.0], 3)
    assert decision == ScaleDecision(3, 2, 0.0, decision.reason if decision else "")
    assert decision is not None and decision.direction == "down" and "< 1 for 5 checks" in decision.reason
    # The count starts over after a scale event.
    for _ in range(4):
        assert autoscaler.observe([0.0, 0.0], 2) is None
    decision = autoscaler.observe([0.0, 0.0], 2)
    assert decision is not None and decision.desired == 1


def test_never_below_min() -> None:
    autoscaler = scaler(minimum=2)
    for _ in range(20):
        assert autoscaler.observe([0.0, 0.0], 2) is None


def test_quiet_checks_do_not_count_while_a_replica_is_starting() -> None:
    autoscaler = scaler()
    for _ in range(10):
        assert autoscaler.observe([0.0], 2, settled=False) is None
    for _ in range(4):
        assert autoscaler.observe([0.0, 0.0], 2) is None
    assert autoscaler.observe([0.0, 0.0], 2) is not None


def test_busy_checks_still_count_while_a_replica_is_starting() -> None:
    autoscaler = scaler()
    autoscaler.observe([9.0], 2, settled=False)
    decision = autoscaler.observe([9.0], 2, settled=False)
    assert decision is not None and decision.desired == 3


def test_the_average_counts_every_running_replica() -> None:
    # 3 calls over 2 replicas (one not answering) is 1.5 each: below the target, above its half.
    autoscaler = scaler()
    for _ in range(10):
        assert autoscaler.observe([3.0], 2) is None


def test_no_figures_means_no_decision_and_a_fresh_count() -> None:
    autoscaler = scaler()
    autoscaler.observe([5.0], 1)
    assert autoscaler.observe([], 1) is None
    assert autoscaler.observe([5.0], 1) is None


def test_a_replica_count_outside_the_bounds_is_brought_back() -> None:
    decision = scaler(minimum=2, maximum=3).observe([], 1)
    assert decision is not None and decision.desired == 2
    decision = scaler(minimum=1, maximum=3).observe([0.0] * 5, 5)
    assert decision is not None and decision.desired == 3


@pytest.mark.parametrize(("minimum", "maximum", "target"), [(0, 1, 1.0), (3, 2, 1.0), (1, 2, 0.0)])
def test_invalid_bounds_are_refused(minimum: int, maximum: int, target: float) -> None:
    with pytest.raises(ValueError):
        Autoscaler(minimum=minimum, maximum=maximum, target=target, up_checks=1, down_checks=1)
