"""The Prometheus rules read only canonical metrics, route by severity, and are all unit-tested.

Runs without promtool: it reads the YAML. test_promtool.py runs the tests themselves.
"""

from __future__ import annotations

import functools
import subprocess
import sys
from collections import defaultdict

import pytest

from tests.unit.collectors.promql import (
    PROMETHEUS_DIR,
    RULE_TEST_FILES,
    canonical_series,
    known_labels,
    label_names,
    load_yaml,
    metric_names,
    recording_rule_names,
    rules,
)

ALL_RULES = rules()
ALERTS = [rule for rule in ALL_RULES if "alert" in rule]
RECORDS = [rule for rule in ALL_RULES if "record" in rule]
WINDOWS = ("5m", "30m", "1h", "2h", "6h", "1d", "3d")


def rule_id(rule: dict) -> str:
    return str(rule.get("alert") or rule.get("record"))


def test_there_are_rules() -> None:
    assert len(ALERTS) >= 10
    assert len(RECORDS) >= 40


@pytest.mark.parametrize("rule", ALL_RULES, ids=rule_id)
def test_rules_read_only_canonical_metrics_and_labels(rule: dict) -> None:
    allowed = canonical_series() | recording_rule_names()
    unknown = metric_names(rule["expr"]) - allowed
    assert not unknown, f"{rule_id(rule)} reads metrics that are not canonical: {sorted(unknown)}"
    unknown_labels = label_names(rule["expr"]) - known_labels()
    assert not unknown_labels, f"{rule_id(rule)} uses unknown labels: {sorted(unknown_labels)}"


def test_recording_rules_read_rules_recorded_earlier_in_their_group() -> None:
    """A recording rule may read another only if that one is evaluated before it in the same group."""
    seen: dict[str, set[str]] = defaultdict(set)
    names = recording_rule_names()
    for rule in RECORDS:
        for used in metric_names(rule["expr"]) & names:
            assert used in seen[rule["group"]], f"{rule['record']} reads {used} before it is recorded"
        seen[rule["group"]].add(rule["record"])


def test_recording_rule_names_follow_level_metric_operations() -> None:
    for rule in RECORDS:
        level, _, operations = rule["record"].split(":")
        assert level in ("agent", "mesh") and operations, rule["record"]


@pytest.mark.parametrize("window", WINDOWS)
def test_every_burn_rate_window_is_recorded(window: str) -> None:
    names = recording_rule_names()
    for base in (
        "agent:agentmesh_requests:rate",
        "agent:agentmesh_request_errors:rate",
        "agent:agentmesh_request_errors:ratio_rate",
        "agent:agentmesh_error_budget_burn:rate",
    ):
        assert f"{base}{window}" in names


def test_burn_rate_alerts_follow_the_workbook() -> None:
    """14.4x over 1h+5m and 6x over 6h+30m page; 3x over 1d+2h and 1x over 3d+6h are tickets."""
    expected = {
        "AgentErrorBudgetBurn1h": ("page", "14.4", "1h", "5m"),
        "AgentErrorBudgetBurn6h": ("page", "6", "6h", "30m"),
        "AgentErrorBudgetBurn1d": ("ticket", "3", "1d", "2h"),
        "AgentErrorBudgetBurn3d": ("ticket", "1", "3d", "6h"),
    }
    by_name = {rule["alert"]: rule for rule in ALERTS}
    for name, (severity, burn, long_window, short_window) in expected.items():
        rule = by_name[name]
        assert rule["labels"]["severity"] == severity
        expr = " ".join(rule["expr"].split())
        assert f"agent:agentmesh_error_budget_burn:rate{long_window} > {burn}" in expr
        assert f"agent:agentmesh_error_budget_burn:rate{short_window} > {burn}" in expr


@pytest.mark.parametrize("alert", ALERTS, ids=rule_id)
def test_alerts_have_a_routable_severity_and_text(alert: dict) -> None:
    assert alert["labels"]["severity"] in ("page", "ticket")
    assert alert["annotations"]["summary"]
    assert alert["annotations"]["description"]


def test_required_alerts_exist() -> None:
    names = {rule["alert"] for rule in ALERTS}
    assert {
        "ContractViolationSpike",
        "AccessDenialSpike",
        "SidecarConfigStale",
        "SidecarConfigRejected",
        "AgentUnhealthy",
        "ControlPlaneDown",
    } <= names
    by_name = {rule["alert"]: rule for rule in ALERTS}
    assert by_name["SidecarConfigStale"]["expr"].strip() == "agentmesh_xds_connected == 0"
    assert by_name["SidecarConfigStale"]["for"] == "5m"
    assert by_name["SidecarConfigRejected"]["expr"].strip() == "increase(agentmesh_xds_rejected_total[10m]) > 0"
    assert by_name["AgentUnhealthy"]["expr"].strip() == "agentmesh_upstream_healthy == 0"
    assert by_name["AgentUnhealthy"]["for"] == "2m"
    assert by_name["ControlPlaneDown"]["expr"].strip() == 'up{job="agentmesh-control-plane"} == 0'


@functools.cache
def _unit_tests() -> tuple[set[str], dict[str, set[bool]]]:
    """(metrics queried by promql_expr_test, alert name -> {fires?} over alert_rule_test cases)."""
    queried: set[str] = set()
    outcomes: dict[str, set[bool]] = defaultdict(set)
    for path in RULE_TEST_FILES:
        for case in load_yaml(path)["tests"]:
            for expr_test in case.get("promql_expr_test", []):
                queried |= metric_names(expr_test["expr"])
            for alert_test in case.get("alert_rule_test", []):
                outcomes[alert_test["alertname"]].add(bool(alert_test.get("exp_alerts")))
    return queried, outcomes


@pytest.mark.parametrize("rule", RECORDS, ids=rule_id)
def test_every_recording_rule_has_a_unit_test(rule: dict) -> None:
    queried, _ = _unit_tests()
    assert rule["record"] in queried, f"no promql_expr_test reads {rule['record']}"


@pytest.mark.parametrize("alert", ALERTS, ids=rule_id)
def test_every_alert_is_tested_firing_and_not_firing(alert: dict) -> None:
    _, outcomes = _unit_tests()
    assert outcomes[alert["alert"]] == {True, False}, f"{alert['alert']}: tested {outcomes[alert['alert']] or 'never'}"


def test_unit_tests_name_only_existing_alerts() -> None:
    _, outcomes = _unit_tests()
    assert set(outcomes) <= {rule["alert"] for rule in ALERTS}


def test_slo_unit_tests_are_generated_from_their_model() -> None:
    """slo_test.yml is the output of make_slo_test.py (expected values computed from the definitions)."""
    script = PROMETHEUS_DIR / "tests" / "make_slo_test.py"
    result = subprocess.run(
        [sys.executable, str(script), "--check"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
