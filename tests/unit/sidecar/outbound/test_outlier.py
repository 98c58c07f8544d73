"""Outlier detection: consecutive errors, ejection time and backoff, max percent, success rate."""

from __future__ import annotations

import grpc
import pytest

from sidecar.config.snapshot import OutlierDetection
from sidecar.errors import HTTP_STATUS
from sidecar.outbound.balancer import EndpointState
from sidecar.outbound.outlier import ERROR_CODES, OutlierDetector, is_error
from tests.unit.sidecar.outbound.fakes import Draws

T0 = 1000.0


def pool(count: int) -> list[EndpointState]:
    return [EndpointState(f"10.0.0.{i}:15006") for i in range(count)]


def detector(endpoints: list[EndpointState], **config: object) -> OutlierDetector:
    settings = {"max_ejection_percent": 100, **config}
    return OutlierDetector(OutlierDetection(**settings), endpoints)  # type: ignore[arg-type]


def fail(d: OutlierDetector, endpoint: EndpointState, times: int, now: float = T0) -> list[bool]:
    return [d.record(endpoint, False, now) for _ in range(times)]


def test_error_codes_are_those_envoy_counts_as_5xx() -> None:
    assert {code for code, status in HTTP_STATUS.items() if status >= 500} == ERROR_CODES
    assert is_error(grpc.StatusCode.UNAVAILABLE)
    assert not is_error(grpc.StatusCode.INVALID_ARGUMENT)
    assert not is_error(grpc.StatusCode.OK)


def test_consecutive_errors_eject_at_the_threshold() -> None:
    endpoints = pool(2)
    d = detector(endpoints, consecutive_errors=5, base_ejection_time=30.0)
    assert fail(d, endpoints[0], 4) == [False] * 4
    assert endpoints[0].available(T0)
    assert d.record(endpoints[0], False, T0) is True
    assert endpoints[0].ejected_until == T0 + 30.0
    assert not endpoints[0].available(T0 + 29.9)
    assert endpoints[0].available(T0 + 30.0)
    assert endpoints[0].times_ejected == 1


def test_a_success_resets_the_count() -> None:
    endpoints = pool(2)
    d = detector(endpoints, consecutive_errors=3)
    fail(d, endpoints[0], 2)
    d.record(endpoints[0], True, T0)
    assert fail(d, endpoints[0], 2) == [False, False]
    assert d.record(endpoints[0], False, T0) is True


def test_results_while_ejected_do_not_eject_again() -> None:
    endpoints = pool(2)
    d = detector(endpoints, consecutive_errors=1, base_ejection_time=10.0)
    assert d.record(endpoints[0], False, T0)
    assert fail(d, endpoints[0], 3, T0 + 1) == [False] * 3
    assert endpoints[0].ejected_until == T0 + 10.0 and endpoints[0].times_ejected == 1


def test_ejection_time_grows_with_each_ejection_up_to_the_maximum() -> None:
    endpoints = pool(2)
    d = detector(endpoints, consecutive_errors=1, base_ejection_time=30.0, max_ejection_time=70.0)
    now = T0
    durations = []
    for _ in range(4):
        assert d.record(endpoints[0], False, now)
        assert endpoints[0].ejected_until is not None
        durations.append(endpoints[0].ejected_until - now)
        now = endpoints[0].ejected_until
    assert durations == [30.0, 60.0, 70.0, 70.0]


def test_backoff_shrinks_for_each_interval_spent_healthy() -> None:
    endpoints = pool(2)
    d = detector(endpoints, consecutive_errors=1, base_ejection_time=30.0, interval=10.0)
    d.record(endpoints[0], False, T0)
    d.record(endpoints[0], False, T0 + 30)  # back at T0+30, ejected again for 60 s
    assert endpoints[0].ejection_backoff == 2
    back = T0 + 90
    assert d.sweep(back).returned == (endpoints[0].address,)
    assert endpoints[0].returned_at == back
    d.sweep(back + 5)  # less than an interval healthy: unchanged
    assert endpoints[0].ejection_backoff == 2
    d.sweep(back + 10)
    d.sweep(back + 20)
    assert endpoints[0].ejection_backoff == 0
    d.record(endpoints[0], False, back + 20)
    assert endpoints[0].ejected_until == back + 20 + 30.0


def test_return_resets_the_error_count() -> None:
    endpoints = pool(2)
    d = detector(endpoints, consecutive_errors=2, base_ejection_time=10.0)
    fail(d, endpoints[0], 2)
    # Back in service: a single error is not enough to eject again.
    assert d.record(endpoints[0], False, T0 + 10) is False
    assert d.record(endpoints[0], False, T0 + 10) is True


def test_the_detector_only_ejects_time_alone_brings_endpoints_back() -> None:
    endpoints = pool(2)
    d = detector(endpoints, consecutive_errors=1, base_ejection_time=10.0)
    d.record(endpoints[0], False, T0)
    # No sweep: availability follows the clock.
    assert endpoints[0].available(T0 + 10.0)
    assert d.sweep(T0 + 10.0).returned == (endpoints[0].address,)
    assert d.sweep(T0 + 20.0).returned == ()


def test_max_ejection_percent_caps_ejections() -> None:
    endpoints = pool(10)
    d = detector(endpoints, consecutive_errors=1, max_ejection_percent=20)
    assert [d.record(e, False, T0) for e in endpoints[:4]] == [True, True, False, False]
    assert d.ejected_count(T0) == 2
    assert d.overflows == 2


def test_max_ejection_percent_below_one_endpoint_ejects_none() -> None:
    endpoints = pool(3)
    d = detector(endpoints, consecutive_errors=1, max_ejection_percent=10)
    assert d.record(endpoints[0], False, T0) is False
    # A third of three endpoints is one endpoint: 34 % allows exactly one.
    d = detector(endpoints, consecutive_errors=1, max_ejection_percent=34)
    assert [d.record(e, False, T0) for e in endpoints] == [True, False, False]


def test_expired_ejections_free_their_share() -> None:
    endpoints = pool(2)
    d = detector(endpoints, consecutive_errors=1, max_ejection_percent=50, base_ejection_time=10.0)
    assert d.record(endpoints[0], False, T0)
    assert not d.record(endpoints[1], False, T0 + 1)
    assert d.record(endpoints[1], False, T0 + 11)


def test_enforcing_percentage_is_a_chance() -> None:
    endpoints = pool(2)
    d = OutlierDetection(consecutive_errors=1, max_ejection_percent=100, enforcing_consecutive_errors=30)
    rolled = OutlierDetector(d, endpoints, rand=Draws([0.5, 0.2]))
    assert rolled.record(endpoints[0], False, T0) is False  # 50 >= 30: detected, not enforced
    assert rolled.record(endpoints[0], False, T0) is True  # 20 < 30
    off = OutlierDetector(OutlierDetection(consecutive_errors=1, enforcing_consecutive_errors=0), endpoints)
    assert off.record(endpoints[1], False, T0) is False


def test_zero_consecutive_errors_disables_that_detection() -> None:
    endpoints = pool(2)
    d = detector(endpoints, consecutive_errors=0)
    assert fail(d, endpoints[0], 50) == [False] * 50


def test_success_rate_ejects_the_outlier() -> None:
    endpoints = pool(5)
    d = detector(
        endpoints,
        consecutive_errors=1000,
        enforcing_success_rate=100,
        success_rate_minimum_hosts=5,
        success_rate_request_volume=100,
    )
    for index, endpoint in enumerate(endpoints):
        # Rates 50, 100, 100, 100, 100: mean 90, stdev 20, threshold 90 - 1.9 * 20 = 52.
        for i in range(100):
            d.record(endpoint, index != 0 or i % 2 == 0, T0)
    result = d.sweep(T0 + 10)
    assert result.ejected == (endpoints[0].address,)
    assert not endpoints[0].available(T0 + 10)
    assert all(e.interval_requests == 0 for e in endpoints)


def test_success_rate_needs_volume_hosts_and_enforcement() -> None:
    def run(enforcing: int, requests: int, hosts: int) -> tuple[str, ...]:
        endpoints = pool(5)
        d = detector(
            endpoints,
            consecutive_errors=1000,
            enforcing_success_rate=enforcing,
            success_rate_minimum_hosts=hosts,
            success_rate_request_volume=100,
        )
        for index, endpoint in enumerate(endpoints):
            for i in range(requests):
                d.record(endpoint, index != 0 or i % 2 == 0, T0)
        return d.sweep(T0 + 10).ejected

    assert run(enforcing=100, requests=100, hosts=5) != ()
    assert run(enforcing=0, requests=100, hosts=5) == ()
    assert run(enforcing=100, requests=99, hosts=5) == ()
    assert run(enforcing=100, requests=100, hosts=6) == ()


def test_success_rate_uses_only_the_last_interval() -> None:
    endpoints = pool(5)
    d = detector(
        endpoints,
        consecutive_errors=1000,
        enforcing_success_rate=100,
        success_rate_minimum_hosts=5,
        success_rate_request_volume=10,
    )
    for endpoint in endpoints:
        for i in range(10):
            d.record(endpoint, endpoint is not endpoints[0] or i % 2 == 0, T0)
    d.sweep(T0)  # ejects endpoints[0]
    endpoints[0].ejected_until = None  # as if returned; the old failures must not count again
    for endpoint in endpoints:
        for _ in range(10):
            d.record(endpoint, True, T0 + 1)
    assert d.sweep(T0 + 10).ejected == ()


def test_sweep_is_due_every_interval() -> None:
    d = detector(pool(1), interval=10.0)
    assert d.due(T0)
    d.sweep(T0)
    assert not d.due(T0 + 9.9)
    assert d.due(T0 + 10.0)


def test_tracking_new_endpoints_changes_the_share() -> None:
    endpoints = pool(1)
    d = detector(endpoints, consecutive_errors=1, max_ejection_percent=50)
    assert d.record(endpoints[0], False, T0) is False  # one of one is 100 %
    more = [*endpoints, *pool(1)]
    d.track(more)
    assert d.record(endpoints[0], False, T0) is True  # one of two is 50 %


@pytest.mark.parametrize("code", [c for c in grpc.StatusCode if c in ERROR_CODES])
def test_every_error_code_counts(code: grpc.StatusCode) -> None:
    assert is_error(code)
