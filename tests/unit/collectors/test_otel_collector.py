"""collectors/otel-collector.yaml: a consistent pipeline (OTLP in; Tempo, Prometheus, Loki out).

Checked offline by reading the YAML: no Collector binary with the contrib
components is installable from PyPI, Debian or npm (the one PyPI wheel that
ships an `otelcol-contrib` binary is a reduced test build without the otlp
receiver or tail_sampling), so `otelcol validate` cannot run here. These
tests check what validate would catch in wiring: every component a pipeline
names is defined, every defined one is used, and the order of processors.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.unit.collectors.promql import COLLECTORS, load_yaml

CONFIG = load_yaml(COLLECTORS / "otel-collector.yaml")
KINDS = ("receivers", "processors", "exporters")


def wiring_problems(config: dict[str, Any]) -> list[str]:
    """What `otelcol validate` would reject in the wiring of `config`."""
    problems = []
    pipelines = config.get("service", {}).get("pipelines", {})
    if not pipelines:
        problems.append("service.pipelines: none")
    used: dict[str, set[str]] = {kind: set() for kind in KINDS}
    for name, pipeline in pipelines.items():
        signal = name.split("/")[0]
        if signal not in ("traces", "metrics", "logs"):
            problems.append(f"pipeline {name}: unknown signal {signal}")
        for kind in KINDS:
            components = pipeline.get(kind, [])
            if kind != "processors" and not components:
                problems.append(f"pipeline {name}: no {kind}")
            if len(set(components)) != len(components):
                problems.append(f"pipeline {name}: a {kind[:-1]} listed twice")
            for component in components:
                used[kind].add(component)
                if component not in (config.get(kind) or {}):
                    problems.append(f"pipeline {name}: {kind[:-1]} {component} is not defined")
    for kind in KINDS:
        for component in config.get(kind) or {}:
            if component not in used[kind]:
                problems.append(f"{kind[:-1]} {component} is defined but used in no pipeline")
    for extension in config.get("service", {}).get("extensions", []):
        if extension not in (config.get("extensions") or {}):
            problems.append(f"extension {extension} is not defined")
    for extension in config.get("extensions") or {}:
        if extension not in config.get("service", {}).get("extensions", []):
            problems.append(f"extension {extension} is defined but not enabled")
    return problems


def pipeline(name: str) -> dict[str, list[str]]:
    return CONFIG["service"]["pipelines"][name]


def test_wiring_is_consistent() -> None:
    assert wiring_problems(CONFIG) == []


@pytest.mark.parametrize(
    ("mutate", "problem"),
    [
        (
            lambda c: c["service"]["pipelines"]["traces"]["exporters"].append("otlp/jaeger"),
            "otlp/jaeger is not defined",
        ),
        (lambda c: c["exporters"].update({"debug": {}}), "exporter debug is defined but used in no pipeline"),
        (lambda c: c["service"]["pipelines"]["logs"].update({"receivers": []}), "pipeline logs: no receivers"),
        (lambda c: c["service"]["pipelines"].update({"profiles": {}}), "unknown signal profiles"),
        (lambda c: c["service"].update({"extensions": []}), "extension health_check is defined but not enabled"),
    ],
)
def test_wiring_problems_are_found(mutate: Any, problem: str) -> None:
    broken = copy.deepcopy(CONFIG)
    mutate(broken)
    assert any(problem in found for found in wiring_problems(broken)), wiring_problems(broken)


def test_otlp_receiver_listens_on_the_standard_ports() -> None:
    protocols = CONFIG["receivers"]["otlp"]["protocols"]
    assert protocols["grpc"]["endpoint"].endswith(":4317")
    assert protocols["http"]["endpoint"].endswith(":4318")


@pytest.mark.parametrize("name", ["traces", "metrics", "logs"])
def test_memory_limiter_first_and_batch_last(name: str) -> None:
    processors = pipeline(name)["processors"]
    assert processors[0] == "memory_limiter"
    assert processors[-1] == "batch"
    assert pipeline(name)["receivers"] == ["otlp"]


def test_traces_are_tail_sampled_before_batching() -> None:
    assert pipeline("traces")["processors"] == ["memory_limiter", "tail_sampling", "batch"]
    assert "tail_sampling" not in pipeline("metrics")["processors"] + pipeline("logs")["processors"]


def test_sampling_keeps_errors_slow_traces_and_a_share_of_the_rest() -> None:
    policies = {policy["type"]: policy for policy in CONFIG["processors"]["tail_sampling"]["policies"]}
    assert policies["status_code"]["status_code"]["status_codes"] == ["ERROR"]
    assert policies["latency"]["latency"]["threshold_ms"] == 2000
    assert 0 < policies["probabilistic"]["probabilistic"]["sampling_percentage"] < 100


def test_each_signal_goes_to_its_backend() -> None:
    exporters = CONFIG["exporters"]
    [traces] = pipeline("traces")["exporters"]
    assert traces.split("/")[0] == "otlp" and exporters[traces]["endpoint"].startswith("tempo:")
    [metrics] = pipeline("metrics")["exporters"]
    assert metrics == "prometheusremotewrite"
    assert exporters[metrics]["endpoint"] == "http://prometheus:9090/api/v1/write"
    [logs] = pipeline("logs")["exporters"]
    assert logs.split("/")[0] == "otlphttp" and exporters[logs]["endpoint"] == "http://loki:3100/otlp"


def test_own_metrics_are_exposed_where_prometheus_scrapes_them() -> None:
    prometheus = load_yaml(COLLECTORS / "prometheus" / "prometheus.yml")
    [job] = [job for job in prometheus["scrape_configs"] if job["job_name"] == "otel-collector"]
    [reader] = CONFIG["service"]["telemetry"]["metrics"]["readers"]
    port = reader["pull"]["exporter"]["prometheus"]["port"]
    assert job["static_configs"][0]["targets"] == [f"otel-collector:{port}"]
