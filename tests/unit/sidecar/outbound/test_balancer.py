"""Balancers: eligibility and panic, least-request P2C and weights, round robin, peak-EWMA."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from sidecar.errors import NoHealthyUpstream, NoRoute
from sidecar.outbound.balancer import (
    EWMA_PENALTY,
    EndpointState,
    LeastRequestBalancer,
    PeakEwma,
    PeakEwmaBalancer,
    RoundRobinBalancer,
    candidates,
)
from tests.unit.sidecar.outbound.fakes import Draws, FakeClock


def endpoints(count: int, **fields: object) -> list[EndpointState]:
    return [EndpointState(f"10.0.0.{i}:15006", **fields) for i in range(count)]  # type: ignore[arg-type]


# Eligibility and panic


def test_unhealthy_and_ejected_endpoints_are_not_candidates() -> None:
    pool = endpoints(4)
    pool[0].healthy = False
    pool[1].ejected_until = 2000.0
    chosen, panic = candidates(pool, 1000.0, 50.0)
    assert list(chosen) == pool[2:]
    assert panic is False


def test_an_ejection_ends_when_its_time_passes() -> None:
    pool = endpoints(2)
    pool[0].ejected_until = 1010.0
    assert list(candidates(pool, 1009.9, 50.0)[0]) == [pool[1]]
    assert list(candidates(pool, 1010.0, 50.0)[0]) == pool


def test_exactly_the_threshold_is_not_panic() -> None:
    pool = endpoints(4)
    pool[0].healthy = pool[1].healthy = False
    chosen, panic = candidates(pool, 0.0, 50.0)
    assert list(chosen) == pool[2:] and panic is False


def test_below_the_panic_threshold_every_endpoint_is_a_candidate() -> None:
    pool = endpoints(3)
    pool[0].healthy = False
    pool[1].ejected_until = 5000.0
    chosen, panic = candidates(pool, 1000.0, 50.0)
    assert list(chosen) == pool and panic is True


def test_no_healthy_endpoint_panics_by_default() -> None:
    pool = endpoints(2, healthy=False)
    chosen, panic = candidates(pool, 0.0, 50.0)
    assert list(chosen) == pool and panic is True


def test_panic_threshold_zero_never_panics() -> None:
    pool = endpoints(3)
    pool[0].healthy = pool[1].healthy = False
    chosen, panic = candidates(pool, 0.0, 0.0)
    assert list(chosen) == [pool[2]] and panic is False
    pool[2].healthy = False
    with pytest.raises(NoHealthyUpstream, match="none of 3 endpoints is healthy"):
        candidates(pool, 0.0, 0.0)


def test_no_endpoints_is_no_healthy_upstream() -> None:
    with pytest.raises(NoHealthyUpstream) as caught:
        LeastRequestBalancer().pick([])
    assert isinstance(caught.value, NoRoute)
    assert caught.value.code.name == "UNAVAILABLE"


def test_balancer_reports_panic() -> None:
    clock = FakeClock()
    pool = endpoints(3)
    pool[0].healthy = pool[1].healthy = False
    balancer = RoundRobinBalancer(clock=clock)
    balancer.pick(pool)
    assert balancer.panic is True
    pool[0].healthy = True
    balancer.pick(pool)
    assert balancer.panic is False


def test_balancers_skip_ineligible_endpoints() -> None:
    clock = FakeClock()
    pool = endpoints(4)
    pool[3].healthy = False
    for balancer in (
        LeastRequestBalancer(rand=random.Random(1).random, clock=clock),
        RoundRobinBalancer(clock=clock),
        PeakEwmaBalancer(rand=random.Random(2).random, clock=clock),
    ):
        assert {balancer.pick(pool).address for _ in range(200)} == {e.address for e in pool[:3]}


# Least request


def test_least_request_prefers_the_less_loaded_of_two_draws() -> None:
    busy, idle = endpoints(2)
    busy.active = 5
    pool = [busy, idle]
    # Draws index 0 then 1, then 1 then 0, then 0 twice (Envoy draws with replacement).
    balancer = LeastRequestBalancer(rand=Draws([0.1, 0.6, 0.6, 0.1, 0.1, 0.2]))
    assert balancer.pick(pool) is idle
    assert balancer.pick(pool) is idle
    assert balancer.pick(pool) is busy


def test_least_request_tie_keeps_the_first_draw() -> None:
    a, b = endpoints(2)
    balancer = LeastRequestBalancer(rand=Draws([0.9, 0.1]))
    assert balancer.pick([a, b]) is b


def test_least_request_shifts_load_to_idle_endpoints() -> None:
    pool = endpoints(4)
    pool[0].active = 10
    balancer = LeastRequestBalancer(rand=random.Random(3).random)
    picks = Counter(balancer.pick(pool).address for _ in range(4000))
    # The loaded endpoint wins only when both draws land on it: 1/16.
    assert picks[pool[0].address] / 4000 == pytest.approx(1 / 16, abs=0.02)


def test_least_request_with_weights_follows_them() -> None:
    heavy, light = endpoints(2)
    heavy.weight = 3
    balancer = LeastRequestBalancer(rand=Draws([]))
    picks = Counter(balancer.pick([heavy, light]).address for _ in range(400))
    assert picks == {heavy.address: 300, light.address: 100}


def test_least_request_weights_are_divided_by_load() -> None:
    heavy, light = endpoints(2)
    heavy.weight = 2
    heavy.active = 3  # 2 / (3 + 1) = 0.5 against 1 / (0 + 1) = 1
    balancer = LeastRequestBalancer(rand=Draws([]))
    picks = Counter(balancer.pick([heavy, light]).address for _ in range(300))
    assert picks == {heavy.address: 100, light.address: 200}


# Round robin


def test_round_robin_rotates() -> None:
    pool = endpoints(3)
    balancer = RoundRobinBalancer()
    assert [balancer.pick(pool).address for _ in range(6)] == [e.address for e in pool * 2]


def test_weighted_round_robin_interleaves_by_weight() -> None:
    a, b, c = endpoints(3)
    a.weight, b.weight, c.weight = 4, 2, 1
    balancer = RoundRobinBalancer()
    order = [balancer.pick([a, b, c]).address for _ in range(7)]
    assert Counter(order) == {a.address: 4, b.address: 2, c.address: 1}
    # Spread out, not in runs: `a` never appears three times in a row.
    assert all(order[i : i + 3] != [a.address] * 3 for i in range(5))


def test_weighted_schedule_restarts_when_the_endpoints_change() -> None:
    a, b, c = endpoints(3)
    a.weight = 3
    balancer = RoundRobinBalancer()
    for _ in range(5):
        balancer.pick([a, b])
    picks = Counter(balancer.pick([a, b, c]).address for _ in range(500))
    assert picks == {a.address: 300, b.address: 100, c.address: 100}


# Peak EWMA


def test_peak_ewma_jumps_to_a_slower_sample() -> None:
    ewma = PeakEwma()
    ewma.observe(0.1, 0.0)
    ewma.observe(2.0, 0.001)
    assert ewma.cost == 2.0


def test_peak_ewma_decays_toward_faster_samples() -> None:
    ewma = PeakEwma(decay=10.0)
    ewma.observe(1.0, 0.0)
    ewma.observe(0.0, 10.0)  # one decay period later: e^-1 of the old value remains
    assert ewma.cost == pytest.approx(0.3679, abs=1e-3)
    ewma.observe(0.1, 10.0)  # no time elapsed: the estimate does not move toward the sample
    assert ewma.cost == pytest.approx(0.3679, abs=1e-3)


def test_peak_ewma_reading_decays_an_idle_estimate() -> None:
    ewma = PeakEwma(decay=10.0)
    ewma.observe(1.0, 0.0)
    assert ewma.current(0.0) == 1.0
    assert ewma.current(10.0) == pytest.approx(0.3679, abs=1e-3)
    assert ewma.current(100.0) < 1e-4


def test_peak_ewma_load_penalizes_busy_endpoints_without_data() -> None:
    fresh, measured = endpoints(2)
    measured.ewma.observe(0.5, 0.0)
    assert PeakEwmaBalancer.load(fresh, 0.0) == 0.0  # idle and unknown: worth trying
    fresh.active = 2
    assert PeakEwmaBalancer.load(fresh, 0.0) == EWMA_PENALTY + 2
    measured.active = 3
    assert PeakEwmaBalancer.load(measured, 0.0) == pytest.approx(0.5 * 4)


def test_peak_ewma_picks_two_distinct_endpoints_and_keeps_the_cheaper() -> None:
    slow, fast = endpoints(2)
    slow.ewma.observe(1.0, 1000.0)
    fast.ewma.observe(0.01, 1000.0)
    clock = FakeClock(1000.0)
    # Whatever the first draw, the second is the other endpoint: the fast one wins both ways.
    assert PeakEwmaBalancer(rand=Draws([0.1, 0.9]), clock=clock).pick([slow, fast]) is fast
    assert PeakEwmaBalancer(rand=Draws([0.9, 0.1]), clock=clock).pick([slow, fast]) is fast


def test_peak_ewma_shifts_traffic_away_from_a_slow_endpoint() -> None:
    clock = FakeClock(0.0)
    pool = endpoints(3)
    latency = {pool[0].address: 0.5, pool[1].address: 0.02, pool[2].address: 0.02}
    balancer = PeakEwmaBalancer(rand=random.Random(11).random, clock=clock)
    picks: Counter[str] = Counter()
    for _ in range(3000):
        chosen = balancer.pick(pool)
        picks[chosen.address] += 1
        clock.advance(0.01)
        chosen.ewma.observe(latency[chosen.address], clock())
    # Without latency awareness the slow endpoint would get a third.
    assert picks[pool[0].address] / 3000 < 0.05


def test_peak_ewma_prefers_fewer_requests_at_equal_latency() -> None:
    clock = FakeClock(0.0)
    a, b = endpoints(2)
    for endpoint in (a, b):
        endpoint.ewma.observe(0.1, 0.0)
    a.active = 4
    assert PeakEwmaBalancer(rand=Draws([0.0, 0.0]), clock=clock).pick([a, b]) is b


def test_balancer_repr_is_readable() -> None:
    assert repr(LeastRequestBalancer(panic_threshold=30.0)) == "LeastRequestBalancer(panic_threshold=30.0)"
    assert "10.0.0.0:15006" in repr(endpoints(1)[0])
