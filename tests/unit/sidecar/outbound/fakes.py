"""Injected clock and randomness for the outbound stage tests."""

from __future__ import annotations

from collections.abc import Iterable


class FakeClock:
    """A monotonic clock that moves only when told."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Draws:
    """A `rand` returning the given values in order (then raising, so a test sees unexpected draws)."""

    def __init__(self, values: Iterable[float]) -> None:
        self._values = list(values)
        self.used = 0

    def __call__(self) -> float:
        value = self._values[self.used]
        self.used += 1
        return value
