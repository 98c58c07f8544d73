"""Spans for calls through the sidecar: SERVER per inbound call, CLIENT per outbound attempt.

Named by full method (`research.v1.Researcher/Search`) with OpenTelemetry RPC
attributes and GenAI agent attributes. Span names and attribute sets are
built once per method (`SpanShape`); a call only starts and ends its span. Contract violations, access
denials and errors are recorded on the span.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, Status, StatusCode

from agentmesh.telemetry.tracing import extract
from sidecar.errors import ContractViolation, MeshError
from sidecar.filters.usage import Usage

_TRACER_NAME = "agentmesh.sidecar"
# Bounded: methods come from contracts or are cut off by the caller of attributes().
_MAX_CACHED_METHODS = 4096


@dataclass(frozen=True, slots=True)
class SpanShape:
    """A span's name and attributes for one method (and destination), built once."""

    name: str
    attributes: Mapping[str, Any]


class CallTracer:
    """Starts spans for one direction of one agent's sidecar."""

    def __init__(self, *, agent: str, version: str, kind: SpanKind) -> None:
        self._tracer = trace.get_tracer(_TRACER_NAME)
        self._kind = kind
        self._base = {"rpc.system": "grpc", "gen_ai.operation.name": "invoke_agent"}
        if kind == SpanKind.SERVER:
            self._base |= {"gen_ai.agent.name": agent, "gen_ai.agent.version": version}
        self._source = agent
        self._shapes: dict[tuple[str, str | None], SpanShape] = {}

    def attributes(self, path: str, destination: str | None = None) -> dict[str, Any]:
        """The span attributes of a call to `path` (at `destination`, for CLIENT spans)."""
        return dict(self.shape(path, destination).attributes)

    def shape(self, path: str, destination: str | None = None) -> SpanShape:
        """Name and attributes of the span of a call to `path`; cached per (path, destination)."""
        key = (path, destination)
        shape = self._shapes.get(key)
        if shape is None:
            name = path.lstrip("/")
            service, _, method = name.partition("/")
            attributes = {**self._base, "rpc.service": service, "rpc.method": method}
            if destination is not None:
                attributes |= {"gen_ai.agent.name": destination, "agentmesh.source_agent": self._source}
            shape = SpanShape(name, MappingProxyType(attributes))
            if len(self._shapes) < _MAX_CACHED_METHODS:
                self._shapes[key] = shape
        return shape

    def start(
        self, path: str, carrier: Mapping[str, str], *, destination: str | None = None
    ) -> tuple[trace.Span, Context]:
        """Starts a span whose parent is the trace context in `carrier`; returns it and its context."""
        return self.start_shape(self.shape(path, destination), carrier)

    def start_shape(self, shape: SpanShape, carrier: Mapping[str, str]) -> tuple[trace.Span, Context]:
        """`start` for a shape resolved beforehand (the inbound chain keeps one per contract method)."""
        parent = extract(carrier)
        span = self._tracer.start_span(shape.name, context=parent, kind=self._kind, attributes=shape.attributes)
        return span, trace.set_span_in_context(span, parent)


def record_usage(span: trace.Span, usage: Usage) -> None:
    span.set_attribute("gen_ai.usage.input_tokens", usage.input_tokens)
    span.set_attribute("gen_ai.usage.output_tokens", usage.output_tokens)
    span.set_attribute("gen_ai.response.model", usage.model)


def end_span(span: trace.Span, code: str, error: BaseException | None = None) -> None:
    """Sets the gRPC status, records the error (as an event for contract problems) and ends the span."""
    if isinstance(error, MeshError):
        span.set_attribute("rpc.grpc.status_code", error.code.value[0])
        if isinstance(error, ContractViolation):
            span.add_event(
                "agentmesh.contract_violation",
                {"side": error.side, "reason": error.reason, "fields": [v.field for v in error.violations]},
            )
        span.set_status(Status(StatusCode.ERROR, error.message))
    elif code == "OK":
        span.set_attribute("rpc.grpc.status_code", 0)
    else:
        span.set_attribute("rpc.grpc.status_code", _CODES.get(code, 2))
        span.set_status(Status(StatusCode.ERROR, code))
    span.end()


_CODES = {"CANCELLED": 1, "UNKNOWN": 2, "DEADLINE_EXCEEDED": 4, "UNAVAILABLE": 14, "INTERNAL": 13}
