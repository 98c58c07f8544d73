"""Latency statistics: percentiles of per-request samples and latency added over a baseline (pure).

Percentiles use linear interpolation between the two nearest ranks (the
method numpy calls "linear"), so p50 of an even-sized sample is the mean of
the two middle values. Samples are microseconds; summaries are milliseconds.
"Added latency" of a path is its percentile minus the direct path's
percentile at the same rate, measured in the same run: a difference of
percentiles, not a percentile of differences (requests are not paired).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

PERCENTILES = (50.0, 90.0, 99.0)


def percentile(ordered: Sequence[float], pct: float) -> float:
    """The `pct` percentile (0..100) of an ascending sequence, interpolated linearly; NaN when it is empty."""
    if not 0 <= pct <= 100:
        raise ValueError(f"percentile must be within 0..100, got {pct}")
    if not ordered:
        return math.nan
    rank = (len(ordered) - 1) * pct / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    weight = rank - low
    return ordered[low] * (1 - weight) + ordered[high] * weight


@dataclass(frozen=True)
class LatencySummary:
    """Percentiles of one run's request latencies, in milliseconds."""

    count: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float

    @classmethod
    def from_micros(cls, samples: Iterable[float]) -> LatencySummary:
        ordered = sorted(samples)
        if not ordered:
            return cls(0, math.nan, math.nan, math.nan, math.nan, math.nan)
        p50, p90, p99 = (percentile(ordered, p) / 1000 for p in PERCENTILES)
        return cls(
            count=len(ordered),
            p50_ms=p50,
            p90_ms=p90,
            p99_ms=p99,
            max_ms=ordered[-1] / 1000,
            mean_ms=sum(ordered) / len(ordered) / 1000,
        )

    def added_over(self, baseline: LatencySummary) -> AddedLatency:
        """This summary's percentiles minus the baseline's."""
        return AddedLatency(
            p50_ms=self.p50_ms - baseline.p50_ms,
            p90_ms=self.p90_ms - baseline.p90_ms,
            p99_ms=self.p99_ms - baseline.p99_ms,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class AddedLatency:
    """Latency a path adds over the direct path, per percentile, in milliseconds."""

    p50_ms: float
    p90_ms: float
    p99_ms: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def ratio(value: float, reference: float) -> float:
    """value / reference; inf when the reference is zero or negative and the value positive, NaN if unknown."""
    if math.isnan(value) or math.isnan(reference):
        return math.nan
    if reference <= 0:
        return math.inf if value > 0 else 1.0
    return value / reference
