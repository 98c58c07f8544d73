"""Regular expressions with RE2 semantics, as Envoy and gRPC's xDS client evaluate them.

Policies are validated with the same engine the consumers use, so a regex
that Envoy or grpc would reject (lookarounds, backreferences) is refused at
`agentmesh policy apply` time instead of being NACKed later.
"""

from __future__ import annotations

from typing import Any, Protocol

import re2

_OPTIONS = re2.Options()
_OPTIONS.log_errors = False


class Pattern(Protocol):
    """What the sidecar needs of a compiled pattern (satisfied by re2 and re patterns)."""

    def fullmatch(self, text: str) -> Any: ...


def compile_re2(pattern: str) -> Pattern:
    """Compiles `pattern` as RE2; raises ValueError naming the problem."""
    try:
        compiled: Pattern = re2.compile(pattern, _OPTIONS)
    except re2.error as exc:
        reason = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise ValueError(f"invalid regex {pattern!r} (RE2 syntax, as Envoy and gRPC use): {reason}") from None
    return compiled
