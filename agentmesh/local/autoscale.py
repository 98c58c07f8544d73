"""Local autoscaling of one agent entry: how many replicas it should run, with hysteresis.

Pure decision logic, fed one check at a time by `agentmesh up` with the
inbound calls in flight of each replica's sidecar
(`agentmesh_requests_in_flight{direction="inbound"}`). Like the Kubernetes
HPA it scales up to `ceil(total / target)` at once, and like its scale-down
stabilization it removes one replica at a time, only after a long quiet
spell: up when the average per replica exceeds the target for
`up_checks` checks in a row, down when it stays below half the target for
`down_checks` checks. Never below `minimum` nor above `maximum`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class ScaleDecision:
    """Go from `current` to `desired` replicas, and why."""

    current: int
    desired: int
    average: float
    reason: str

    @property
    def direction(self) -> str:
        return "up" if self.desired > self.current else "down"


class Autoscaler:
    """The hysteresis state of one agent entry; `observe` once per check."""

    def __init__(self, *, minimum: int, maximum: int, target: float, up_checks: int, down_checks: int) -> None:
        if not 1 <= minimum <= maximum:
            raise ValueError(f"need 1 <= minimum <= maximum, got {minimum}..{maximum}")
        if target <= 0:
            raise ValueError("target must be positive")
        self.minimum = minimum
        self.maximum = maximum
        self.target = target
        self.up_checks = up_checks
        self.down_checks = down_checks
        self._high = 0
        self._low = 0

    def __repr__(self) -> str:
        return f"Autoscaler({self.minimum}..{self.maximum}, target={self.target:g}, high={self._high}, low={self._low})"

    def observe(self, in_flight: Sequence[float], current: int, *, settled: bool = True) -> ScaleDecision | None:
        """One check: the in-flight figures of the replicas that answered, and how many replicas run.

        `settled` is False while a replica is still starting: its empty
        figures would drag the average down, so no quiet spell is counted
        then (a scale-up can still happen).
        """
        if current < self.minimum or current > self.maximum:
            self._reset()
            desired = min(max(current, self.minimum), self.maximum)
            return ScaleDecision(current, desired, 0.0, f"outside replicas {self.minimum}..{self.maximum}")
        if not in_flight or current <= 0:
            self._reset()
            return None
        total = sum(in_flight)
        average = total / current
        if average > self.target:
            self._high, self._low = self._high + 1, 0
            if self._high >= self.up_checks and current < self.maximum:
                desired = min(self.maximum, max(current + 1, math.ceil(total / self.target)))
                self._reset()
                return ScaleDecision(
                    current,
                    desired,
                    average,
                    f"{average:.1f} calls in flight per replica > target {self.target:g} for {self.up_checks} checks",
                )
            return None
        if average < self.target / 2 and settled:
            self._high, self._low = 0, self._low + 1
            if self._low >= self.down_checks and current > self.minimum:
                self._reset()
                return ScaleDecision(
                    current,
                    current - 1,
                    average,
                    f"{average:.1f} calls in flight per replica < {self.target / 2:g} for {self.down_checks} checks",
                )
            return None
        self._reset()
        return None

    def _reset(self) -> None:
        self._high = self._low = 0
