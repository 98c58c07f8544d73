"""Reading xDS proto fields the way Envoy reads them: durations, wrapped integers, RE2 regexes.

Also home of `DecodeError`, raised by every decoder: its message is what the
sidecar sends back as the NACK's `error_detail`, so it names the resource and
the field path (`RouteConfiguration "agent/researcher": virtual_hosts[0].routes[3]: ...`).
"""

from __future__ import annotations

import re
from typing import Any


class DecodeError(ValueError):
    """An xDS resource the sidecar cannot apply as Envoy would; the message says where and why."""

    def within(self, prefix: str) -> DecodeError:
        """The same error with `prefix` (a resource or an enclosing field path) in front."""
        return DecodeError(f"{prefix}: {self}")


def seconds(duration: Any, at: str) -> float:
    """google.protobuf.Duration -> seconds; negative durations are invalid in xDS."""
    value = float(duration.seconds) + duration.nanos / 1e9
    if value < 0:
        raise DecodeError(f"{at}: negative duration {value}s")
    return value


def optional_seconds(message: Any, field: str, at: str) -> float | None:
    """A Duration field in seconds, or None when it is unset."""
    return seconds(getattr(message, field), at) if message.HasField(field) else None


def uint(message: Any, field: str, default: int) -> int:
    """A google.protobuf.UInt32Value field, or Envoy's `default` when it is unset."""
    return int(getattr(message, field).value) if message.HasField(field) else default


def percent(message: Any, field: str, default: int, at: str) -> int:
    """A UInt32Value holding a percentage (Envoy validates these as at most 100)."""
    value = uint(message, field, default)
    if value > 100:
        raise DecodeError(f"{at}: {field} is {value}, more than 100 %")
    return value


def regex(pattern: str, at: str, flags: int = 0) -> re.Pattern[str]:
    """Compiles a safe_regex (RE2 syntax; the shared subset behaves the same in Python's `re`)."""
    try:
        return re.compile(pattern, flags)
    except re.error as exc:
        raise DecodeError(f"{at}: invalid regex {pattern!r}: {exc}") from None
