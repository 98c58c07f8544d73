"""Domain errors raised along the request path, and their one mapping to status.

Filters, stages and adapters raise these; they never abort an RPC themselves.
The listeners (inbound, gRPC egress, HTTP egress) turn them into a gRPC status
(with google.rpc details) or an HTTP status at one boundary, `status_for`.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc


@dataclass(frozen=True)
class FieldViolation:
    """One field-level problem, as google.rpc.BadRequest.FieldViolation."""

    field: str
    description: str
    reason: str = ""


class MeshError(Exception):
    """Base class: a failure with a gRPC code, a message and a metric reason."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    reason: str = "internal"
    violations: tuple[FieldViolation, ...] = ()

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ContractViolation(MeshError):
    """A message broke the contract: unparsable, unknown fields, or rule violations.

    `side` is "request" (INVALID_ARGUMENT: the caller's fault) or "response"
    (INTERNAL: the agent broke its own contract).
    """

    def __init__(self, message: str, *, side: str, reason: str, violations: tuple[FieldViolation, ...] = ()) -> None:
        super().__init__(message)
        self.side = side
        self.reason = reason
        self.violations = violations
        self.code = grpc.StatusCode.INVALID_ARGUMENT if side == "request" else grpc.StatusCode.INTERNAL


class UnknownMethod(MeshError):
    code = grpc.StatusCode.UNIMPLEMENTED
    reason = "unknown_method"


class NoRoute(MeshError):
    """No agent (or no healthy one) serves the requested target."""

    code = grpc.StatusCode.UNAVAILABLE
    reason = "no_route"


class NoHealthyUpstream(NoRoute):
    """A cluster has no endpoint to send to (Envoy's `no_healthy_upstream`, a 503: UNAVAILABLE)."""

    reason = "no_healthy_upstream"


class Overloaded(MeshError):
    """A cluster's circuit breaker is full: Envoy's upstream overflow, a 503 gRPC callers see as UNAVAILABLE."""

    code = grpc.StatusCode.UNAVAILABLE
    reason = "upstream_overflow"


class AccessDenied(MeshError):
    """An access (RBAC) filter refused the call; `policy` names the policy that decided (a metric label)."""

    code = grpc.StatusCode.PERMISSION_DENIED
    reason = "access_denied"

    def __init__(self, message: str, *, policy: str) -> None:
        super().__init__(message)
        self.policy = policy


class Unauthenticated(AccessDenied):
    """The caller's certificate verified but names no agent of this mesh (sidecar/filters/authn.py)."""

    code = grpc.StatusCode.UNAUTHENTICATED
    reason = "unauthenticated"


class UnknownTarget(MeshError):
    code = grpc.StatusCode.NOT_FOUND
    reason = "unknown_target"


class UpstreamUnavailable(MeshError):
    code = grpc.StatusCode.UNAVAILABLE
    reason = "upstream_unavailable"


class UpstreamTimeout(MeshError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    reason = "deadline_exceeded"


class Draining(MeshError):
    code = grpc.StatusCode.UNAVAILABLE
    reason = "draining"


class UpstreamStatus(MeshError):
    """The agent answered with an error; `code` is what the caller should see."""

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode,
        http_status: int | None = None,
        violations: tuple[FieldViolation, ...] = (),
    ) -> None:
        super().__init__(message)
        self.code = code
        self.http_status = http_status
        self.violations = violations
        self.reason = f"upstream_{code.name.lower()}"


# gRPC code -> HTTP status, as in the Connect protocol and grpc-gateway.
HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}

# HTTP status from an untouched agent -> gRPC code the caller sees.
GRPC_CODE_FOR_HTTP: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.UNIMPLEMENTED,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    409: grpc.StatusCode.ABORTED,
    412: grpc.StatusCode.FAILED_PRECONDITION,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    499: grpc.StatusCode.CANCELLED,
    501: grpc.StatusCode.UNIMPLEMENTED,
    502: grpc.StatusCode.UNAVAILABLE,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def grpc_code_for_http(status: int) -> grpc.StatusCode:
    """The gRPC code for an HTTP error status from an agent."""
    if status in GRPC_CODE_FOR_HTTP:
        return GRPC_CODE_FOR_HTTP[status]
    if 400 <= status < 500:
        return grpc.StatusCode.FAILED_PRECONDITION
    return grpc.StatusCode.UNKNOWN if status < 500 or status >= 600 else grpc.StatusCode.INTERNAL
