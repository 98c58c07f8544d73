"""Distributed tracing for sidecar and control plane (OpenTelemetry SDK).

Configured by the standard variables: `OTEL_TRACES_EXPORTER` (otlp | console |
none), `OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`,
`OTEL_EXPORTER_OTLP_PROTOCOL` (grpc | http/protobuf), `OTEL_TRACES_SAMPLER`
(default parentbased_always_on; e.g. parentbased_traceidratio with
`OTEL_TRACES_SAMPLER_ARG=0.1`), `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_SDK_DISABLED`.
Spans are always created (trace ids reach logs and exemplars); they are
exported only when an exporter is named or an OTLP endpoint is set, through a
batch processor off the request path, so an unreachable collector never
fails or slows a call.

W3C `traceparent`, `tracestate` and `baggage` are the propagation format.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, MutableMapping

from opentelemetry import trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

log = logging.getLogger("agentmesh.telemetry")

PROPAGATOR = CompositePropagator([TraceContextTextMapPropagator(), W3CBaggagePropagator()])

_provider: TracerProvider | None = None


def _exporter() -> SpanExporter | None:
    name = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if name == "none" or (not name and not endpoint):
        return None
    if name == "console":
        return ConsoleSpanExporter()
    protocol = (
        os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "grpc"
    )
    if protocol.startswith("http"):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

        return HttpExporter()
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

    return GrpcExporter()


def configure_tracing(service_name: str, *, attributes: Mapping[str, str] | None = None) -> TracerProvider:
    """Installs the process's tracer provider once; later calls return it unchanged."""
    global _provider
    if _provider is not None:
        return _provider
    resource = Resource.create({"service.name": service_name, **(attributes or {})})
    provider = TracerProvider(resource=resource)
    exporter = _exporter()
    if exporter is not None:
        processor: SpanProcessor = BatchSpanProcessor(exporter)
        provider.add_span_processor(processor)
        log.info("exporting traces", extra={"exporter": type(exporter).__name__})
    trace.set_tracer_provider(provider)
    _provider = provider
    return provider


def shutdown_tracing() -> None:
    """Flushes spans still queued for export (on graceful shutdown)."""
    if _provider is not None:
        _provider.shutdown()


def extract(carrier: Mapping[str, str]) -> Context:
    """The trace context (and baggage) a caller sent, from lower-case headers or gRPC metadata."""
    return PROPAGATOR.extract(carrier)


def inject(carrier: MutableMapping[str, str], context: Context | None = None) -> None:
    """Writes traceparent/tracestate/baggage for the current (or given) span into `carrier`."""
    PROPAGATOR.inject(carrier, context=context)


def trace_ids(span: trace.Span) -> tuple[str, str]:
    """(trace_id, span_id) as lower-case hex, empty strings for a non-recording span."""
    context = span.get_span_context()
    if not context.is_valid:
        return "", ""
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


__all__ = ["PROPAGATOR", "configure_tracing", "extract", "inject", "shutdown_tracing", "trace_ids"]
