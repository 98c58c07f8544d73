"""collectors/prometheus/prometheus.yml: sidecars found through the control plane, labelled by agent, version, team."""

from __future__ import annotations

import re

from tests.unit.collectors.promql import PROMETHEUS_DIR, RULE_FILES, load_yaml

CONFIG = load_yaml(PROMETHEUS_DIR / "prometheus.yml")
JOBS = {job["job_name"]: job for job in CONFIG["scrape_configs"]}


def test_jobs_are_named_as_the_rules_expect() -> None:
    assert {"agentmesh-sidecars", "agentmesh-control-plane"} <= set(JOBS)


def test_sidecars_come_from_the_control_plane_service_discovery() -> None:
    sidecars = JOBS["agentmesh-sidecars"]
    assert "static_configs" not in sidecars
    [sd] = sidecars["http_sd_configs"]
    assert re.fullmatch(r"http://[^/]+:18080/sd/prometheus", sd["url"])


def test_control_plane_is_scraped_where_its_service_discovery_lives() -> None:
    control_plane = JOBS["agentmesh-control-plane"]
    [static] = control_plane["static_configs"]
    [target] = static["targets"]
    sd_host = JOBS["agentmesh-sidecars"]["http_sd_configs"][0]["url"].split("//")[1].split("/")[0]
    assert target == sd_host
    assert control_plane.get("metrics_path", "/metrics") == "/metrics"


def test_sidecar_identity_labels_are_kept_as_they_are() -> None:
    """honor_labels: a sidecar's own agent/version/team labels stay `agent`, not `exported_agent`."""
    assert JOBS["agentmesh-sidecars"]["honor_labels"] is True


def test_targets_without_an_agent_are_dropped_and_missing_labels_defaulted() -> None:
    relabel = JOBS["agentmesh-sidecars"]["relabel_configs"]
    drops = [r for r in relabel if r.get("action") == "drop"]
    assert drops == [{"source_labels": ["agent"], "regex": "", "action": "drop"}]
    defaults = {r["target_label"]: r["replacement"] for r in relabel if r.get("target_label")}
    assert defaults == {"version": "unknown", "team": "unknown"}


def test_every_rule_file_is_loaded() -> None:
    assert sorted(CONFIG["rule_files"]) == sorted(f"rules/{path.name}" for path in RULE_FILES)


def test_alerts_go_to_alertmanager() -> None:
    [alertmanager] = CONFIG["alerting"]["alertmanagers"]
    assert alertmanager["static_configs"][0]["targets"] == ["alertmanager:9093"]
