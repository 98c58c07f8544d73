"""The one boundary where domain errors become gRPC statuses.

Every listener (inbound, gRPC egress) ends a failed call through `abort`, which
attaches google.rpc.Status details: `BadRequest` field violations for contract
violations and an `ErrorInfo` naming the reason, so grpcurl, generated stubs
and the HTTP egress all show the same precise error.
"""

from __future__ import annotations

from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from sidecar.errors import ContractViolation, FieldViolation, MeshError

ERROR_DOMAIN = "agentmesh.io"


def rpc_status_of(exc: MeshError) -> status_pb2.Status:
    """The google.rpc.Status for a domain error."""
    status = status_pb2.Status(code=exc.code.value[0], message=exc.message)
    info = error_details_pb2.ErrorInfo(reason=exc.reason.upper(), domain=ERROR_DOMAIN)
    if isinstance(exc, ContractViolation):
        info.metadata["side"] = exc.side
    if exc.violations:
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description, reason=v.reason)
                for v in exc.violations
            ]
        )
        status.details.add().Pack(bad)
    status.details.add().Pack(info)
    return status


async def abort(context: grpc.aio.ServicerContext, exc: MeshError) -> None:
    """Ends the call with the error's status and details (raises, as context.abort does)."""
    status = rpc_status.to_status(rpc_status_of(exc))
    await context.abort(status.code, status.details, status.trailing_metadata)


def field_violations(details: status_pb2.Status) -> list[FieldViolation]:
    """Reads BadRequest field violations back out of a google.rpc.Status."""
    found: list[FieldViolation] = []
    for detail in details.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            found += [FieldViolation(v.field, v.description, v.reason) for v in bad.field_violations]
    return found


def status_from_error(error: grpc.aio.AioRpcError) -> status_pb2.Status | None:
    """The rich status a peer attached to an error, if any."""
    metadata: Any = error.trailing_metadata() or ()
    for key, value in metadata:
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            status = status_pb2.Status()
            status.ParseFromString(value)
            return status
    return None


__all__ = ["abort", "field_violations", "rpc_status_of", "status_from_error"]
