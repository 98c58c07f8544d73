"""The Traces dashboard: its TraceQL searches name what the sidecar's spans carry, and its variables fit the queries."""

from __future__ import annotations

import itertools
import json
import re
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from dashboards import agent, generate, traces
from sidecar import app
from sidecar.config.bootstrap import AgentIdentity, Bootstrap
from sidecar.errors import UpstreamUnavailable
from sidecar.filters.tracing import CallTracer, end_span, record_usage
from sidecar.filters.usage import Usage

_ATTRIBUTE = re.compile(r"\b(span|resource)\.([\w.]+)")


def model() -> dict[str, Any]:
    return dict(json.loads(generate.render()["traces.json"]))


def targets() -> list[tuple[str, dict[str, Any]]]:
    return [(panel["title"], target) for panel in model()["panels"] for target in panel.get("targets", [])]


def variables() -> dict[str, dict[str, Any]]:
    return {variable["name"]: variable for variable in model()["templating"]["list"]}


def sidecar_span(kind: SpanKind, code: str, *, destination: str | None = None) -> ReadableSpan:
    """A span as the sidecar writes it for one call to `writer`, ended with gRPC status `code`."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    attributes = CallTracer(agent="writer", version="v2", kind=kind).attributes("/scribe.v1.Scribe/Draft", destination)
    span = provider.get_tracer("test").start_span("scribe.v1.Scribe/Draft", kind=kind, attributes=attributes)
    record_usage(span, Usage(input_tokens=3, output_tokens=5, model="small"))
    end_span(span, code, UpstreamUnavailable("down") if code == "UNAVAILABLE" else None)
    [finished] = exporter.get_finished_spans()
    return finished


async def sidecar_resource_attributes(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The resource attributes `sidecar.app.run` gives the tracer provider."""
    seen: dict[str, str] = {}

    class Configured(Exception):
        pass

    def configure(service_name: str, *, attributes: dict[str, str]) -> None:
        seen.update(attributes, **{"service.name": service_name})
        raise Configured

    monkeypatch.setattr(app, "configure_tracing", configure)
    bootstrap = Bootstrap.model_construct(agent=AgentIdentity(name="writer", version="v2", team="content"))
    with pytest.raises(Configured):
        await app.run(bootstrap)
    return seen


def test_every_panel_is_a_traceql_search_in_tempo() -> None:
    found = targets()
    assert len(found) == 4
    for title, target in found:
        assert target["datasource"] == {"type": "tempo", "uid": "tempo"}, title
        assert target["queryType"] == "traceql", title
        assert '"$agent"' in target["query"], title


def test_the_searches_are_by_agent_status_duration_and_caller() -> None:
    queries = [target["query"] for _, target in targets()]
    assert traces.THROUGH_AGENT_QUERY in queries
    assert "$status" in traces.THROUGH_AGENT_QUERY
    assert "status = error" in traces.FAILED_QUERY and "$status" not in traces.FAILED_QUERY
    assert "duration > $min_duration" in traces.SLOW_QUERY
    assert "kind = client" in traces.BY_CALLER_QUERY and "select(span.agentmesh.source_agent" in traces.BY_CALLER_QUERY


async def test_searched_attributes_are_those_the_sidecar_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    written = {
        "span": {
            name
            for kind, destination in ((SpanKind.SERVER, None), (SpanKind.CLIENT, "writer"))
            for name in (sidecar_span(kind, "OK", destination=destination).attributes or {})
        },
        "resource": set(await sidecar_resource_attributes(monkeypatch)),
    }
    searched = {(scope, name) for _, target in targets() for scope, name in _ATTRIBUTE.findall(target["query"])}
    assert {scope for scope, _ in searched} == {"span", "resource"}
    for scope, name in searched:
        assert name in written[scope], f"{scope}.{name} is not on the sidecar's spans"


def test_agent_attributes_mean_what_the_searches_assume() -> None:
    server = sidecar_span(SpanKind.SERVER, "OK")
    client = sidecar_span(SpanKind.CLIENT, "OK", destination="scribe")
    assert server.attributes is not None and client.attributes is not None
    # SERVER: the sidecar's own agent; CLIENT: the agent called, and the caller.
    assert server.attributes["gen_ai.agent.name"] == "writer"
    assert client.attributes["gen_ai.agent.name"] == "scribe"
    assert client.attributes["agentmesh.source_agent"] == "writer"
    assert "agentmesh.source_agent" not in server.attributes


def test_status_choices_match_the_span_status_the_sidecar_sets() -> None:
    # A successful call's span stays UNSET: `status = ok` would find nothing, hence "ok" is "not error".
    assert sidecar_span(SpanKind.SERVER, "OK").status.status_code == StatusCode.UNSET
    assert sidecar_span(SpanKind.SERVER, "UNAVAILABLE").status.status_code == StatusCode.ERROR
    assert traces.STATUS == {"any": "true", "error": "status = error", "ok": "status != error"}


def test_variables() -> None:
    found = variables()
    assert list(found) == ["agent", "status", "min_duration"]
    assert found["agent"]["type"] == "query"
    assert found["agent"]["query"] == "label_values(agentmesh_requests_total, destination_agent)"
    assert found["agent"]["datasource"]["uid"] == "prometheus"
    for name in ("status", "min_duration"):
        variable = found[name]
        assert variable["type"] == "custom"
        # Single values only: Grafana hands a single value to Tempo unchanged.
        assert variable["multi"] is False and variable["includeAll"] is False
        choices = [choice.split(" : ") for choice in variable["query"].split(",")]
        assert [{"text": text, "value": value} for text, value in choices] == [
            {"text": option["text"], "value": option["value"]} for option in variable["options"]
        ]
        assert variable["current"]["value"] in {option["value"] for option in variable["options"]}
    assert found["status"]["current"]["text"] == "any"
    assert found["status"]["allowCustomValue"] is False
    assert found["min_duration"]["current"]["value"] == "2s"


def test_min_durations_are_traceql_durations() -> None:
    for value in traces.MIN_DURATIONS:
        assert re.fullmatch(r"\d+(ms|s|m)", value), value


@pytest.mark.parametrize(
    ("status", "min_duration"), list(itertools.product(traces.STATUS.values(), traces.MIN_DURATIONS))
)
def test_queries_stay_balanced_for_every_choice(status: str, min_duration: str) -> None:
    for title, target in targets():
        query = target["query"].replace("$status", status).replace("$min_duration", min_duration)
        assert "$" not in query.replace("$agent", ""), title
        assert query.count("{") == query.count("}") == 1, title
        assert query.count("(") == query.count(")"), title
        assert query.count('"') % 2 == 0, title


def test_links_to_the_agent_dashboard_for_the_selected_agent() -> None:
    links = {link["type"]: link for link in model()["links"]}
    assert links["link"]["url"] == f"/d/{agent.UID}?var-agent=$agent"
    assert links["link"]["keepTime"] is True
    assert links["dashboards"]["tags"] == ["agentmesh"]
