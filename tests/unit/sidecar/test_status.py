from __future__ import annotations

import grpc
from google.rpc import error_details_pb2

from sidecar.errors import ContractViolation, FieldViolation, UpstreamTimeout, grpc_code_for_http
from sidecar.status import field_violations, rpc_status_of


def test_contract_violation_carries_bad_request_and_error_info() -> None:
    exc = ContractViolation(
        "request violates x",
        side="request",
        reason="rule_violation",
        violations=(FieldViolation("query", "must be at least 3 characters", "string.min_len"),),
    )
    status = rpc_status_of(exc)
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert field_violations(status) == list(exc.violations)
    info = error_details_pb2.ErrorInfo()
    assert status.details[-1].Unpack(info)
    assert (info.reason, info.domain, info.metadata["side"]) == ("RULE_VIOLATION", "agentmesh.io", "request")


def test_other_errors_carry_only_error_info() -> None:
    status = rpc_status_of(UpstreamTimeout("too slow"))
    assert status.code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
    assert len(status.details) == 1 and field_violations(status) == []


def test_http_statuses_map_to_the_codes_users_expect() -> None:
    expected = {
        400: grpc.StatusCode.INVALID_ARGUMENT,
        404: grpc.StatusCode.UNIMPLEMENTED,
        429: grpc.StatusCode.RESOURCE_EXHAUSTED,
        503: grpc.StatusCode.UNAVAILABLE,
        504: grpc.StatusCode.DEADLINE_EXCEEDED,
        418: grpc.StatusCode.FAILED_PRECONDITION,
        500: grpc.StatusCode.INTERNAL,
    }
    assert {status: grpc_code_for_http(status) for status in expected} == expected
