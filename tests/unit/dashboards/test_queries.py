"""Every PromQL query of the dashboards reads canonical metrics, uses known labels and parses.

A dashboard query may read a canonical metric (ARCHITECTURE.md §5, listed in
tests/unit/collectors/promql.py), `up`, or a series recorded by
collectors/prometheus/rules/recording.yml (itself checked to read only
canonical metrics).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from dashboards import _panels, generate
from tests.unit.collectors.promql import (
    PROMETHEUS_DIR,
    canonical_series,
    known_labels,
    label_names,
    metric_names,
    recording_rule_names,
)

_LABEL_VALUES = re.compile(r"^label_values\((?P<selector>.+),\s*(?P<label>\w+)\)$")
# Grafana's variables, replaced by something PromQL accepts to check the syntax.
_GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__range": "1h", "$__interval": "1m"}


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, PromQL) for every Prometheus query and query variable of every dashboard (custom variables have none)."""
    found = []
    for name, text in generate.render().items():
        model = json.loads(text)
        for panel in model["panels"]:
            for target in panel.get("targets", []):
                datasource = target.get("datasource") or panel.get("datasource") or {}
                if datasource.get("type") == "prometheus":
                    found.append((f"{name} / {panel['title']} / {target['refId']}", target["expr"]))
        for variable in model.get("templating", {}).get("list", []):
            if variable["type"] != "query":
                continue
            match = _LABEL_VALUES.match(variable["query"])
            assert match, f"{name} ${variable['name']}: expected label_values(selector, label)"
            found.append((f"{name} ${variable['name']}", match["selector"]))
    return found


QUERIES = dashboard_queries()


def test_dashboards_have_queries() -> None:
    assert len(QUERIES) > 50
    # Query variables are checked on every dashboard, also on those whose panels query Tempo only.
    assert {"agent.json $agent", "traces.json $agent"} <= {where for where, _ in QUERIES}


@pytest.mark.parametrize(("where", "expr"), QUERIES, ids=[where for where, _ in QUERIES])
def test_queries_read_only_canonical_metrics(where: str, expr: str) -> None:
    names = metric_names(expr)
    assert names, f"{where}: reads no metric"
    unknown = names - canonical_series() - recording_rule_names()
    assert not unknown, f"{where} reads metrics that are not canonical: {sorted(unknown)}"


@pytest.mark.parametrize(("where", "expr"), QUERIES, ids=[where for where, _ in QUERIES])
def test_queries_use_known_labels(where: str, expr: str) -> None:
    unknown = label_names(expr) - known_labels()
    assert not unknown, f"{where} uses unknown labels: {sorted(unknown)}"


def test_error_codes_are_those_of_the_slo_rules() -> None:
    text = (PROMETHEUS_DIR / "rules" / "recording.yml").read_text(encoding="utf-8")
    assert set(re.findall(r'grpc_code=~"([^"]+)"', text)) == {_panels.ERROR_CODES}


def as_promql(expr: str) -> str:
    """A dashboard query with Grafana's variables replaced, for promtool."""
    for variable, value in _GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return re.sub(r"\$\w+", "x", expr)


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (apt-get install prometheus)")
def test_queries_parse(tmp_path: Path) -> None:
    """promtool parses every query (as the expression of a recording rule)."""
    rules = [{"record": f"dashboard_query_{i}", "expr": as_promql(expr)} for i, (_, expr) in enumerate(QUERIES)]
    path = tmp_path / "dashboard_queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}), encoding="utf-8")
    result = subprocess.run(
        ["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_variables_are_replaced_for_parsing() -> None:
    expr = 'rate(x{a=~"$agent"}[$__rate_interval]) + increase(y[$__range])'
    assert as_promql(expr) == 'rate(x{a=~"x"}[5m]) + increase(y[1h])'
