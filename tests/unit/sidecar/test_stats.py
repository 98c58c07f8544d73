"""SidecarStats: canonical metrics, pre-bound children, exemplars and bounded cardinality."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from sidecar.stats import DURATION_BUCKETS, OTHER, SidecarStats, grpc_code_label

OPENMETRICS = "application/openmetrics-text; version=1.0.0"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.fixture
def stats() -> SidecarStats:
    return SidecarStats(agent="writer", version="v1", team="content")


def route_labels(**overrides: str) -> dict[str, str]:
    labels = {
        "direction": "inbound",
        "source_agent": "planner",
        "destination_agent": "writer",
        "destination_version": "v1",
        "rpc_method": "/scribe.v1.Scribe/Draft",
    }
    labels.update(overrides)
    return labels


def value(stats: SidecarStats, name: str, labels: dict[str, str]) -> float | None:
    return stats.registry.get_sample_value(name, labels)


def series(stats: SidecarStats) -> dict[str, int]:
    """Sample count per metric family, from the Prometheus text exposition."""
    body, _ = stats.exposition("")
    return {family.name: len(family.samples) for family in parse_text(body.decode())}


def test_route_is_cached_per_label_tuple(stats: SidecarStats) -> None:
    first = stats.route(**route_labels())

    assert stats.route(**route_labels()) is first
    assert stats.route(**route_labels(source_agent="critic")) is not first
    assert first.labels == route_labels()


def test_call_is_counted_timed_and_tracked_in_flight(stats: SidecarStats) -> None:
    route = stats.route(**route_labels())
    in_flight = {"direction": "inbound", "destination_agent": "writer"}

    route.start()
    route.start()
    assert value(stats, "agentmesh_requests_in_flight", in_flight) == 2
    route.finish("OK", 0.2)
    route.finish("UNAVAILABLE", 7.0)

    assert value(stats, "agentmesh_requests_in_flight", in_flight) == 0
    ok = route_labels(grpc_code="OK")
    assert value(stats, "agentmesh_requests_total", ok) == 1
    assert value(stats, "agentmesh_requests_total", route_labels(grpc_code="UNAVAILABLE")) == 1
    assert value(stats, "agentmesh_request_duration_seconds_count", ok) == 1
    assert value(stats, "agentmesh_request_duration_seconds_sum", ok) == pytest.approx(0.2)
    assert value(stats, "agentmesh_request_duration_seconds_bucket", {**ok, "le": "0.25"}) == 1
    assert value(stats, "agentmesh_request_duration_seconds_bucket", {**ok, "le": "0.1"}) == 0


def test_histogram_reaches_300_seconds(stats: SidecarStats) -> None:
    route = stats.route(**route_labels())
    route.start()
    route.finish("OK", 299.0)
    labels = route_labels(grpc_code="OK")

    assert DURATION_BUCKETS[-1] == 300.0
    assert value(stats, "agentmesh_request_duration_seconds_bucket", {**labels, "le": "120.0"}) == 0
    assert value(stats, "agentmesh_request_duration_seconds_bucket", {**labels, "le": "300.0"}) == 1


@pytest.mark.parametrize(
    ("code", "label"),
    [
        ("OK", "OK"),
        ("0", "OK"),
        ("14", "UNAVAILABLE"),
        ("deadline_exceeded", "DEADLINE_EXCEEDED"),
        ("teapot", "UNKNOWN"),
    ],
)
def test_grpc_code_spellings(stats: SidecarStats, code: str, label: str) -> None:
    route = stats.route(**route_labels())
    route.start()
    route.finish(code, 0.01)

    assert grpc_code_label(code) == label
    assert value(stats, "agentmesh_requests_total", route_labels(grpc_code=label)) == 1


def test_made_up_codes_do_not_grow_the_series(stats: SidecarStats) -> None:
    route = stats.route(**route_labels())
    for i in range(500):
        route.start()
        route.finish(f"bogus-{i}", 0.01)

    assert value(stats, "agentmesh_requests_total", route_labels(grpc_code="UNKNOWN")) == 500
    assert series(stats)["agentmesh_requests"] == 1


def test_exemplar_only_in_openmetrics(stats: SidecarStats) -> None:
    route = stats.route(**route_labels())
    route.start()
    route.finish("OK", 0.02, trace_id=TRACE_ID)

    body, content_type = stats.exposition(OPENMETRICS)
    assert content_type.startswith("application/openmetrics-text")
    (histogram,) = [f for f in parse_openmetrics(body.decode()) if f.name == "agentmesh_request_duration_seconds"]
    exemplars = [s.exemplar for s in histogram.samples if s.exemplar is not None]
    assert len(exemplars) == 1
    assert exemplars[0].labels == {"trace_id": TRACE_ID}
    assert exemplars[0].value == pytest.approx(0.02)

    text, text_type = stats.exposition("text/plain")
    assert text_type.startswith("text/plain")
    assert TRACE_ID not in text.decode()


def test_oversized_trace_id_is_dropped_not_raised(stats: SidecarStats) -> None:
    route = stats.route(**route_labels())
    route.start()
    route.finish("OK", 0.02, trace_id="f" * 200)

    body, _ = stats.exposition(OPENMETRICS)
    assert "trace_id" not in body.decode()
    assert value(stats, "agentmesh_requests_total", route_labels(grpc_code="OK")) == 1


def test_contract_violations(stats: SidecarStats) -> None:
    stats.contract_violation("/scribe.v1.Scribe/Draft", "request", "rule_violation")
    stats.contract_violation("/scribe.v1.Scribe/Draft", "request", "rule_violation")
    stats.contract_violation("/scribe.v1.Scribe/Draft", "sideways", "malformed")

    labels = {"agent": "writer", "rpc_method": "/scribe.v1.Scribe/Draft", "side": "request", "reason": "rule_violation"}
    assert value(stats, "agentmesh_contract_violations_total", labels) == 2
    assert value(stats, "agentmesh_contract_violations_total", {**labels, "side": OTHER, "reason": "malformed"}) == 1


def test_upstream_health(stats: SidecarStats) -> None:
    labels = {"agent": "writer", "version": "v1"}
    assert value(stats, "agentmesh_upstream_healthy", labels) is None

    stats.set_upstream_healthy(True)
    assert value(stats, "agentmesh_upstream_healthy", labels) == 1
    stats.set_upstream_healthy(False)
    assert value(stats, "agentmesh_upstream_healthy", labels) == 0


def test_tokens(stats: SidecarStats) -> None:
    stats.record_tokens("gpt-x", 120, 30)
    stats.record_tokens("gpt-x", 10, -5)

    labels = {"agent": "writer", "team": "content", "model": "gpt-x"}
    assert value(stats, "agentmesh_tokens_total", {**labels, "token_type": "input"}) == 130
    assert value(stats, "agentmesh_tokens_total", {**labels, "token_type": "output"}) == 30


def test_flood_of_methods_and_callers_stays_bounded() -> None:
    stats = SidecarStats(agent="writer", version="v1", team="content")
    for i in range(10_000):
        route = stats.route(
            direction="inbound",
            source_agent=f"caller-{i}",
            destination_agent="writer",
            destination_version="v1",
            rpc_method=f"/junk.v1.Junk/M{i}",
        )
        route.start()
        route.finish("INVALID_ARGUMENT", 0.001)
        stats.contract_violation(f"/junk.v1.Junk/M{i}", "request", "unknown_method")
        stats.record_tokens(f"model-{i}", 1, 1)

    counts = series(stats)
    limit = stats.max_label_values
    # The first `limit` (caller, method) pairs get their own series, then one "other" series.
    assert counts["agentmesh_requests"] == limit + 1
    assert counts["agentmesh_request_duration_seconds"] == (limit + 1) * (len(DURATION_BUCKETS) + 3)
    assert counts["agentmesh_contract_violations"] <= limit + 1
    assert counts["agentmesh_tokens"] == 2 * (limit + 1)
    assert sum(counts.values()) < 6000
    overflow = stats.registry.get_sample_value
    assert overflow("agentmesh_label_overflow_total", {"label": "source_agent"}) == 10_000 - limit
    assert overflow("agentmesh_label_overflow_total", {"label": "model"}) == 10_000 - limit
    other = {**route_labels(source_agent=OTHER, rpc_method=OTHER), "grpc_code": "INVALID_ARGUMENT"}
    assert value(stats, "agentmesh_requests_total", other) == 10_000 - limit


def test_small_limit_folds_into_other() -> None:
    stats = SidecarStats(agent="writer", version="v1", team="content", max_label_values=2)
    routes = [stats.route(**route_labels(rpc_method=f"/p.S/M{i}")) for i in range(5)]

    assert [r.labels["rpc_method"] for r in routes] == ["/p.S/M0", "/p.S/M1", OTHER, OTHER, OTHER]
    assert routes[2] is routes[4]
    # An admitted value keeps its own series after the limit is reached.
    assert stats.route(**route_labels(rpc_method="/p.S/M1")) is routes[1]


def test_resolve_route_says_when_a_route_may_be_kept() -> None:
    stats = SidecarStats(agent="writer", version="v1", team="content", max_label_values=1)
    kept, stable = stats.resolve_route(**route_labels())
    assert stable and kept is stats.route(**route_labels())
    assert stats.resolve_route(**route_labels()) == (kept, True)
    folded, stable = stats.resolve_route(**route_labels(source_agent="editor"))
    assert not stable and folded.labels["source_agent"] == OTHER


def test_empty_label_values_read_unknown(stats: SidecarStats) -> None:
    route = stats.route(**route_labels(source_agent=""))

    assert route.labels["source_agent"] == "unknown"


def test_each_instance_has_its_own_registry() -> None:
    a = SidecarStats(agent="a", version="v1", team="t")
    b = SidecarStats(agent="b", version="v1", team="t")
    a.set_upstream_healthy(True)

    assert a.registry is not b.registry
    assert b.registry.get_sample_value("agentmesh_upstream_healthy", {"agent": "a", "version": "v1"}) is None
    assert REGISTRY.get_sample_value("agentmesh_upstream_healthy", {"agent": "a", "version": "v1"}) is None


def test_invalid_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="max_label_values"):
        SidecarStats(agent="a", version="v1", team="t", max_label_values=0)


def test_text_exposition_parses_with_canonical_names(stats: SidecarStats) -> None:
    route = stats.route(**route_labels())
    route.start()
    route.finish("OK", 0.1)
    stats.contract_violation("/scribe.v1.Scribe/Draft", "response", "unknown_field")
    stats.set_upstream_healthy(True)
    stats.record_tokens("m", 1, 2)

    body, content_type = stats.exposition("")
    assert content_type.startswith("text/plain")
    names = {(f.name, f.type) for f in parse_text(body.decode())}
    assert {
        ("agentmesh_requests", "counter"),
        ("agentmesh_request_duration_seconds", "histogram"),
        ("agentmesh_requests_in_flight", "gauge"),
        ("agentmesh_contract_violations", "counter"),
        ("agentmesh_upstream_healthy", "gauge"),
        ("agentmesh_tokens", "counter"),
        ("agentmesh_label_overflow", "counter"),
    } <= names
