"""Cluster state: attempts, circuit breaking, EDS updates that keep endpoint state, retries on a budget."""

from __future__ import annotations

import random
from collections import Counter
from types import MappingProxyType

import grpc
import pytest

from sidecar.config.snapshot import (
    CircuitBreakers,
    Cluster,
    ClusterEndpoints,
    Endpoint,
    MeshSnapshot,
    OutlierDetection,
    RetryPolicy,
)
from sidecar.errors import NoHealthyUpstream, NoRoute, Overloaded
from sidecar.outbound.balancer import LeastRequestBalancer, PeakEwmaBalancer, RoundRobinBalancer
from sidecar.outbound.endpoints import Attempt, ClusterState, ClusterStates
from sidecar.outbound.retry import should_retry
from tests.unit.sidecar.outbound.fakes import FakeClock

NAME = "agent/researcher/v1"
OK = grpc.StatusCode.OK
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


def assignment(*addresses: str, name: str = NAME, unhealthy: tuple[str, ...] = ()) -> ClusterEndpoints:
    return ClusterEndpoints(name, tuple(Endpoint(a, healthy=a not in unhealthy) for a in addresses))


def state(cluster: Cluster | None = None, *addresses: str, clock: FakeClock | None = None) -> ClusterState:
    return ClusterState(
        cluster or Cluster(NAME),
        assignment(*(addresses or ("10.0.0.1:15006", "10.0.0.2:15006"))),
        clock=clock or FakeClock(),
        rand=random.Random(1).random,
    )


def test_attempts_count_in_flight_requests() -> None:
    cluster = state()
    first, second = cluster.start(), cluster.start()
    assert cluster.active_requests == 2
    assert first.endpoint.active + second.endpoint.active == 2
    first.finish(OK)
    first.finish(OK)  # a second finish does nothing
    assert cluster.active_requests == 1
    second.finish(OK)
    assert cluster.active_requests == 0
    assert all(e.active == 0 for e in cluster.endpoints)


def test_circuit_breaker_overflow_is_overloaded() -> None:
    cluster = state(Cluster(NAME, circuit_breakers=CircuitBreakers(max_requests=2)))
    attempts = [cluster.start(), cluster.start()]
    with pytest.raises(Overloaded) as caught:
        cluster.start()
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert NAME in caught.value.message and "max_requests is 2" in caught.value.message
    assert cluster.overflows == 1
    attempts[0].finish(OK)
    cluster.start()  # room again


def test_no_endpoints_names_the_cluster() -> None:
    cluster = ClusterState(Cluster(NAME), None)
    with pytest.raises(NoHealthyUpstream, match=f"cluster {NAME}: no endpoints"):
        cluster.start()
    assert cluster.active_requests == 0


def test_balancer_follows_lb_policy() -> None:
    assert isinstance(state(Cluster(NAME)).balancer, LeastRequestBalancer)
    assert isinstance(state(Cluster(NAME, lb_policy="round_robin")).balancer, RoundRobinBalancer)
    cluster = state(Cluster(NAME, lb_policy="peak_ewma"))
    assert isinstance(cluster.balancer, PeakEwmaBalancer)
    cluster.update(Cluster(NAME, lb_policy="round_robin"), cluster.assignment)
    assert isinstance(cluster.balancer, RoundRobinBalancer)


def test_update_keeps_the_state_of_endpoints_that_stay() -> None:
    clock = FakeClock()
    cluster = state(Cluster(NAME), "10.0.0.1:15006", "10.0.0.2:15006", clock=clock)
    kept = next(e for e in cluster.endpoints if e.address == "10.0.0.2:15006")
    kept.active = 3
    kept.ewma.observe(0.2, clock())
    kept.times_ejected = 1
    cluster.update(
        Cluster(NAME),
        ClusterEndpoints(NAME, (Endpoint("10.0.0.2:15006", healthy=False, weight=5), Endpoint("10.0.0.3:15006", True))),
    )
    assert [e.address for e in cluster.endpoints] == ["10.0.0.2:15006", "10.0.0.3:15006"]
    same = cluster.endpoints[0]
    assert same is kept
    assert (same.active, same.ewma.cost, same.times_ejected) == (3, 0.2, 1)
    assert (same.healthy, same.weight) == (False, 5)
    assert cluster.endpoints[1].active == 0


def test_attempts_in_flight_on_removed_endpoints_finish_cleanly() -> None:
    cluster = state(Cluster(NAME), "10.0.0.1:15006")
    attempt = cluster.start()
    cluster.update(Cluster(NAME), assignment("10.0.0.9:15006"))
    attempt.finish(UNAVAILABLE)
    assert cluster.active_requests == 0
    assert cluster.endpoints[0].active == 0


def test_results_feed_outlier_detection() -> None:
    clock = FakeClock()
    outlier = OutlierDetection(consecutive_errors=2, max_ejection_percent=50, base_ejection_time=30.0)
    cluster = state(Cluster(NAME, lb_policy="round_robin", outlier=outlier), clock=clock)
    bad = cluster.endpoints[0]
    for _ in range(2):
        attempt = cluster.start()
        attempt.finish(UNAVAILABLE if attempt.endpoint is bad else OK)
        attempt = cluster.start()
        attempt.finish(UNAVAILABLE if attempt.endpoint is bad else OK)
    assert bad.ejected(clock())
    assert {cluster.start().endpoint.address for _ in range(10)} == {cluster.endpoints[1].address}
    assert cluster.healthy_count() == 1


def test_cancelled_attempts_say_nothing_about_the_endpoint() -> None:
    outlier = OutlierDetection(consecutive_errors=1, max_ejection_percent=100)
    cluster = state(Cluster(NAME, outlier=outlier))
    for _ in range(5):
        cluster.start().finish(grpc.StatusCode.CANCELLED)
    assert all(e.available(0.0) and e.ewma.stamp is None for e in cluster.endpoints)
    assert cluster.active_requests == 0


def test_a_cluster_change_rebuilds_endpoint_outlier_history() -> None:
    """As Envoy: any change to the Cluster rebuilds it, so earlier errors and ejections are forgotten."""
    first = OutlierDetection(consecutive_errors=3, max_ejection_percent=100)
    cluster = state(Cluster(NAME, outlier=first))
    endpoint = cluster.endpoints[0]
    assert cluster.outlier is not None
    cluster.outlier.record(endpoint, False, 0.0)
    cluster.outlier.record(endpoint, False, 0.0)
    cluster.update(
        Cluster(NAME, outlier=OutlierDetection(consecutive_errors=3, max_ejection_percent=50)), cluster.assignment
    )
    assert cluster.outlier is not None and cluster.outlier.config.max_ejection_percent == 50
    assert cluster.outlier.record(endpoint, False, 0.0) is False  # the two earlier errors no longer count
    assert cluster.outlier.record(endpoint, False, 0.0) is False
    assert cluster.outlier.record(endpoint, False, 0.0) is True
    cluster.update(cluster.config, cluster.assignment)  # the same config: nothing is rebuilt
    assert endpoint.ejected(1.0)
    cluster.update(Cluster(NAME), cluster.assignment)
    assert cluster.outlier is None
    assert cluster.sweep(0.0) is None


def test_sweep_runs_when_due() -> None:
    clock = FakeClock()
    outlier = OutlierDetection(consecutive_errors=1, max_ejection_percent=100, base_ejection_time=5.0, interval=10.0)
    cluster = state(Cluster(NAME, outlier=outlier), clock=clock)
    assert cluster.sweep() is not None
    assert cluster.sweep() is None  # not due yet
    cluster.start().finish(UNAVAILABLE)
    clock.advance(10.0)
    result = cluster.sweep()
    assert result is not None and len(result.returned) == 1


def test_panic_spreads_over_unhealthy_endpoints(caplog: pytest.LogCaptureFixture) -> None:
    cluster = ClusterState(
        Cluster(NAME, lb_policy="round_robin"),
        assignment("a:1", "b:1", "c:1", unhealthy=("a:1", "b:1")),
        clock=FakeClock(),
    )
    picks = Counter(cluster.start().endpoint.address for _ in range(6))
    assert picks == {"a:1": 2, "b:1": 2, "c:1": 2}
    assert cluster.panic
    assert "below the panic threshold" in caplog.text
    strict = ClusterState(Cluster(NAME), assignment("a:1", "b:1", unhealthy=("a:1", "b:1")), panic_threshold=0.0)
    with pytest.raises(NoHealthyUpstream, match=f"cluster {NAME}: none of 2 endpoints"):
        strict.start()


def test_peak_ewma_cluster_moves_traffic_off_a_slow_endpoint() -> None:
    clock = FakeClock()
    cluster = ClusterState(
        Cluster(NAME, lb_policy="peak_ewma"),
        assignment("slow:1", "fast:1", "fast:2"),
        clock=clock,
        rand=random.Random(4).random,
    )
    picks: Counter[str] = Counter()
    for _ in range(2000):
        attempt = cluster.start()
        picks[attempt.endpoint.address] += 1
        clock.advance(0.005)
        attempt.finish(OK, latency=0.8 if attempt.endpoint.address == "slow:1" else 0.01)
    assert picks["slow:1"] / 2000 < 0.05


def test_latency_defaults_to_time_since_start() -> None:
    clock = FakeClock()
    cluster = state(Cluster(NAME, lb_policy="peak_ewma"), "only:1", clock=clock)
    attempt = cluster.start()
    clock.advance(0.25)
    attempt.finish(OK)
    assert cluster.endpoints[0].ewma.cost == pytest.approx(0.25)


def call_with_retries(cluster: ClusterState, policy: RetryPolicy, results: list[grpc.StatusCode]) -> int:
    """A forwarder-shaped retry loop; returns how many attempts were made."""
    attempt_number = 0
    while True:
        attempt_number += 1
        retrying = attempt_number > 1
        attempt = cluster.start()
        code = results.pop(0)
        attempt.finish(code)
        if retrying:
            cluster.release_retry()
        if code == OK:
            return attempt_number
        if not should_retry(policy, code, attempt=attempt_number, idempotent=True):
            return attempt_number
        if not cluster.try_retry():
            return attempt_number


POLICY = RetryPolicy(retry_on=frozenset({UNAVAILABLE}), num_retries=3, per_try_timeout=None)


def test_retries_happen_within_budget() -> None:
    cluster = state(Cluster(NAME, circuit_breakers=CircuitBreakers(retry_budget_percent=20.0, min_retry_concurrency=1)))
    assert call_with_retries(cluster, POLICY, [UNAVAILABLE, UNAVAILABLE, OK]) == 3
    assert cluster.retry_budget.active == 0


def test_out_of_budget_means_no_retry() -> None:
    breakers = CircuitBreakers(retry_budget_percent=20.0, min_retry_concurrency=1)
    cluster = state(Cluster(NAME, circuit_breakers=breakers))
    # Another call's retry holds the only slot (1 >= max(1, 20 % of 0 active requests)).
    assert cluster.try_retry()
    assert call_with_retries(cluster, POLICY, [UNAVAILABLE, OK]) == 1
    assert cluster.retry_budget.overflows == 1
    cluster.release_retry()
    assert call_with_retries(cluster, POLICY, [UNAVAILABLE, OK]) == 2


def snapshot(clusters: dict[str, Cluster], endpoints: dict[str, ClusterEndpoints]) -> MeshSnapshot:
    return MeshSnapshot(clusters=MappingProxyType(clusters), endpoints=MappingProxyType(endpoints))


def test_cluster_states_follow_snapshots() -> None:
    states = ClusterStates(clock=FakeClock(), rand=random.Random(0).random)
    v1, v2 = Cluster("agent/r/v1"), Cluster("agent/r/v2")
    states.sync(snapshot({v1.name: v1, v2.name: v2}, {v1.name: assignment("a:1", name=v1.name)}))
    assert len(states) == 2 and "agent/r/v1" in states
    first = states.get("agent/r/v1")
    endpoint = first.endpoints[0]
    with pytest.raises(NoHealthyUpstream):
        states.get("agent/r/v2").start()

    v1_again = Cluster("agent/r/v1", lb_policy="round_robin")
    states.sync(snapshot({v1_again.name: v1_again}, {v1.name: assignment("a:1", "b:1", name=v1.name)}))
    assert states.get("agent/r/v1") is first
    assert first.endpoints[0] is endpoint and len(first.endpoints) == 2
    assert isinstance(first.balancer, RoundRobinBalancer)
    assert "agent/r/v2" not in states
    with pytest.raises(NoRoute, match="cluster agent/r/v2 is not known"):
        states.get("agent/r/v2")
    assert [s.name for s in states] == ["agent/r/v1"]


def test_cluster_states_sweep_reports_changes() -> None:
    clock = FakeClock()
    states = ClusterStates(clock=clock)
    outlier = OutlierDetection(consecutive_errors=1, max_ejection_percent=100, base_ejection_time=5.0, interval=1.0)
    cluster = Cluster(NAME, outlier=outlier)
    states.sync(snapshot({NAME: cluster}, {NAME: assignment("a:1")}))
    states.get(NAME).start().finish(UNAVAILABLE)
    assert states.sweep() == {}
    clock.advance(5.0)
    changes = states.sweep()
    assert changes[NAME].returned == ("a:1",)


def test_describe_lists_endpoints() -> None:
    cluster = state()
    attempt: Attempt = cluster.start()
    described = cluster.describe()
    assert described["name"] == NAME and described["active_requests"] == 1
    endpoints = described["endpoints"]
    assert isinstance(endpoints, list) and {e["address"] for e in endpoints} == {"10.0.0.1:15006", "10.0.0.2:15006"}
    assert NAME in repr(cluster) and NAME in repr(attempt)
