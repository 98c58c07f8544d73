"""Options and parameter types several commands share: lifetimes, `--log-level`, and the exit codes of servers.

A lifetime (`--ttl`) is read with the project's one duration parser
(`agentmesh.config.parse_duration`: `90m`, `12h`, `30d`) and must be at
least a second. The commands that run a process (control-plane,
identity-agent, sidecar) end with the same exit codes.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any, Final, TypeVar

import click

from agentmesh.config import parse_duration

# Exit codes of the commands that run a process.
EXIT_CONFIG: Final = 2
EXIT_STARTUP: Final = 3

LOG_LEVELS: Final = ("debug", "info", "warning", "error")

_F = TypeVar("_F", bound=Callable[..., Any])


class Lifetime(click.ParamType):
    """A lifetime of at least a second, such as 90m, 12h or 30d, as a timedelta."""

    name = "DURATION"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> timedelta:
        if isinstance(value, timedelta):
            return value
        try:
            seconds = parse_duration(str(value))
        except ValueError:
            seconds = 0.0
        if seconds < 1:
            self.fail(f"{value!r} is not a lifetime: expected at least 1s, with s, m, h or d, e.g. 1h or 30d")
        return timedelta(seconds=seconds)


LIFETIME: Final = Lifetime()


def log_level_option(function: _F) -> _F:
    """Adds `--log-level debug|info|warning|error` (default info), passed as `log_level`."""
    return click.option("--log-level", type=click.Choice(LOG_LEVELS), default="info", show_default=True)(function)
