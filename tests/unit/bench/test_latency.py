"""Percentiles and added latency."""

from __future__ import annotations

import math

import pytest

from bench.latency import LatencySummary, percentile, ratio


def test_percentile_interpolates_between_ranks():
    ordered = [1.0, 2.0, 3.0, 4.0]
    assert percentile(ordered, 0) == 1.0
    assert percentile(ordered, 100) == 4.0
    assert percentile(ordered, 50) == 2.5
    assert percentile(ordered, 90) == pytest.approx(3.7)


def test_percentile_of_one_and_of_none():
    assert percentile([7.0], 99) == 7.0
    assert math.isnan(percentile([], 50))


@pytest.mark.parametrize("pct", [-1, 100.5])
def test_percentile_out_of_range(pct):
    with pytest.raises(ValueError):
        percentile([1.0], pct)


def test_summary_is_in_milliseconds_from_microsecond_samples_in_any_order():
    samples = [5000, 1000, 3000, 2000, 4000]
    summary = LatencySummary.from_micros(samples)
    assert summary.count == 5
    assert summary.p50_ms == 3.0
    assert summary.max_ms == 5.0
    assert summary.mean_ms == 3.0
    assert summary.p99_ms == pytest.approx(4.96)


def test_summary_of_no_samples_is_nan():
    summary = LatencySummary.from_micros([])
    assert summary.count == 0 and math.isnan(summary.p50_ms)


def test_added_latency_is_a_difference_of_percentiles_and_may_be_negative():
    path = LatencySummary(10, 2.0, 3.0, 9.0, 10.0, 2.5)
    direct = LatencySummary(10, 0.5, 1.0, 12.0, 20.0, 1.0)
    added = path.added_over(direct)
    assert (added.p50_ms, added.p90_ms, added.p99_ms) == (1.5, 2.0, -3.0)
    assert added.to_dict() == {"p50_ms": 1.5, "p90_ms": 2.0, "p99_ms": -3.0}


def test_ratio_edges():
    assert ratio(3.0, 2.0) == 1.5
    assert ratio(1.0, 0.0) == math.inf
    assert ratio(-1.0, -2.0) == 1.0
    assert math.isnan(ratio(math.nan, 1.0))
