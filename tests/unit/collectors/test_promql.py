"""The PromQL reader the metric-name checks rely on, on the constructs our queries use."""

from __future__ import annotations

import pytest

from tests.unit.collectors.promql import canonical_series, known_labels, label_names, metric_names


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("up", {"up"}),
        ('sum by (agent) (rate(agentmesh_requests_total{direction="inbound"}[5m]))', {"agentmesh_requests_total"}),
        (
            "histogram_quantile(0.99, sum by (le, agent) (rate(x_bucket[$__rate_interval])))",
            {"x_bucket"},
        ),
        ("a:b:rate5m / on (agent) group_left () c:d:ratio", {"a:b:rate5m", "c:d:ratio"}),
        ("max by (agent) (x > 0 < 1) or on (agent) group by (agent) (y) * on () group_left () z", {"x", "y", "z"}),
        ("rate(x[1h] offset 10m) > 1e-3", {"x"}),
        ("count(x == 0) or vector(0)", {"x"}),
        ('sum(y{grpc_code=~"UNKNOWN|INTERNAL", rpc_method="/a.B/C"})', {"y"}),
        ('x{version=~"$version"} unless bool z', {"x", "z"}),
        ("topk(10, sum(increase(x[$__range])))", {"x"}),
        ("scalar(sum(x)) and NaN", {"x"}),
    ],
)
def test_metric_names(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_label_names_from_matchers_and_grouping() -> None:
    expr = 'sum by (agent, le) (rate(x{direction="inbound",rpc_method=~"$m"}[5m])) / on (agent) group_left () y'
    assert label_names(expr) == {"agent", "le", "direction", "rpc_method"}


def test_label_values_inside_strings_are_not_label_names() -> None:
    assert label_names('x{a="b=c", d!~"e{f=g}"}') == {"a", "d"}


def test_histograms_stand_for_their_series() -> None:
    series = canonical_series()
    assert {"agentmesh_request_duration_seconds_bucket", "agentmesh_cp_push_duration_seconds_count"} <= series
    assert "agentmesh_request_duration_seconds" not in series
    assert {"agentmesh_requests_total", "up"} <= series


def test_known_labels_include_target_labels() -> None:
    assert {"agent", "version", "team", "instance", "job", "grpc_code", "le"} <= known_labels()
    assert "trace_id" not in known_labels()
