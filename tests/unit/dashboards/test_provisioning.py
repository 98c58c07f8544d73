"""dashboards/provisioning: the datasources the dashboards name exist, and link metrics, traces and logs."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from agentmesh.telemetry.logs import JsonFormatter
from dashboards import generate
from sidecar.stats import SidecarStats
from tests.unit.collectors.promql import canonical_series, known_labels, label_names, load_yaml, metric_names

PROVISIONING = Path(generate.__file__).resolve().parent / "provisioning"
DATASOURCES = {
    source["uid"]: source for source in load_yaml(PROVISIONING / "datasources" / "agentmesh.yaml")["datasources"]
}


def references(node: Any) -> list[dict[str, str]]:
    """Every {"type", "uid"} datasource reference anywhere in a dashboard model."""
    found = []
    if isinstance(node, dict):
        if isinstance(node.get("datasource"), dict):
            found.append(node["datasource"])
        for value in node.values():
            found.extend(references(value))
    elif isinstance(node, list):
        for item in node:
            found.extend(references(item))
    return found


def test_datasources_have_the_uids_the_dashboards_use() -> None:
    assert {uid: source["type"] for uid, source in DATASOURCES.items()} == {
        "prometheus": "prometheus",
        "tempo": "tempo",
        "loki": "loki",
    }


@pytest.mark.parametrize("name", sorted(generate.DASHBOARDS))
def test_every_datasource_reference_is_provisioned(name: str) -> None:
    model = json.loads(generate.render()[name])
    found = references(model)
    assert found
    for reference in found:
        assert reference["uid"] in DATASOURCES, reference
        assert reference["type"] == DATASOURCES[reference["uid"]]["type"], reference


def exemplar_label_of_the_sidecar() -> str:
    stats = SidecarStats(agent="writer", version="v1", team="content")
    route = stats.route(
        direction="inbound",
        source_agent="planner",
        destination_agent="writer",
        destination_version="v1",
        rpc_method="/a.B/C",
    )
    route.start()
    route.finish("OK", 0.02, trace_id="4bf92f3577b34da6a3ce929d0e0e4736")
    body, _ = stats.exposition("application/openmetrics-text; version=1.0.0")
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.exemplar is not None:
                [label] = sample.exemplar.labels
                return str(label)
    raise AssertionError("the sidecar exposed no exemplar")


def test_prometheus_exemplars_open_traces_in_tempo() -> None:
    [destination] = DATASOURCES["prometheus"]["jsonData"]["exemplarTraceIdDestinations"]
    assert destination["datasourceUid"] == "tempo"
    # The exemplar label name must be the one sidecars put on their observations.
    assert destination["name"] == exemplar_label_of_the_sidecar()


def test_tempo_links_to_logs_and_metrics() -> None:
    tempo = DATASOURCES["tempo"]["jsonData"]
    assert tempo["tracesToLogsV2"]["datasourceUid"] == "loki"
    assert tempo["tracesToLogsV2"]["filterByTraceID"] is True
    # Loki's OTLP endpoint turns the resource attribute service.name into the label service_name.
    assert tempo["tracesToLogsV2"]["tags"] == [{"key": "service.name", "value": "service_name"}]
    assert tempo["tracesToMetrics"]["datasourceUid"] == "prometheus"
    # The span attribute naming the agent becomes the metrics' agent label.
    assert {"key": "gen_ai.agent.name", "value": "agent"} in tempo["tracesToMetrics"]["tags"]


def test_tempo_metric_queries_read_canonical_metrics() -> None:
    queries = DATASOURCES["tempo"]["jsonData"]["tracesToMetrics"]["queries"]
    assert queries
    for query in queries:
        expr = query["query"]
        assert "$$__tags" in expr  # a literal $__tags once Grafana has expanded environment variables
        expr = expr.replace("$$__tags", 'agent="x"')
        assert metric_names(expr) <= canonical_series(), query["name"]
        assert label_names(expr) <= known_labels(), query["name"]


def test_loki_log_lines_open_their_trace() -> None:
    metadata, line = DATASOURCES["loki"]["jsonData"]["derivedFields"]
    assert (metadata["matcherType"], metadata["matcherRegex"]) == ("label", "trace_id")
    assert line["matcherType"] == "regex"
    for field in (metadata, line):
        assert field["datasourceUid"] == "tempo"
        assert field["url"] == "$${__value.raw}"


def test_the_trace_id_of_a_json_log_line_is_found() -> None:
    """The regex finds the trace id in a line as agentmesh.telemetry.logs writes it."""
    _, line = DATASOURCES["loki"]["jsonData"]["derivedFields"]
    record = logging.LogRecord("agentmesh.access", logging.INFO, __file__, 1, "call", None, None)
    provider = TracerProvider()
    with provider.get_tracer("test").start_as_current_span("call") as span:
        text = JsonFormatter(component="sidecar").format(record)
        trace_id = format(span.get_span_context().trace_id, "032x")
    [found] = re.findall(line["matcherRegex"], text)
    assert found == trace_id


def test_dashboards_provider_reads_a_directory_of_files() -> None:
    [provider] = load_yaml(PROVISIONING / "dashboards" / "agentmesh.yaml")["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards/agentmesh"
    assert provider["allowUiUpdates"] is False
