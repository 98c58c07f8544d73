"""collectors/alertmanager/alertmanager.yml: pages and tickets routed apart, redundant alerts inhibited.

`amtool` (Debian's `prometheus-alertmanager` package) checks the file and
resolves routes; those tests skip without it. The structure tests run always.
The inhibition is exercised against a real Alertmanager in
tests/integration/test_prometheus.py.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.unit.collectors.promql import COLLECTORS, load_yaml, rules

CONFIG_PATH = COLLECTORS / "alertmanager" / "alertmanager.yml"
CONFIG = load_yaml(CONFIG_PATH)
AMTOOL = shutil.which("amtool")
needs_amtool = pytest.mark.skipif(
    AMTOOL is None, reason="amtool not installed (apt-get install prometheus-alertmanager)"
)


def amtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    assert AMTOOL is not None
    return subprocess.run([AMTOOL, *map(str, args)], capture_output=True, text=True, timeout=30, check=False)


@needs_amtool
def test_config_is_valid() -> None:
    result = amtool("check-config", CONFIG_PATH)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_amtool
def test_invalid_config_is_rejected(tmp_path: Path) -> None:
    broken = tmp_path / "alertmanager.yml"
    broken.write_text(CONFIG_PATH.read_text(encoding="utf-8").replace("receiver: pager", "receiver: nobody"))
    assert amtool("check-config", broken).returncode != 0


@needs_amtool
@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (["severity=page", "alertname=AgentErrorBudgetBurn1h", "agent=writer"], "pager"),
        (["severity=ticket", "alertname=AgentUnhealthy", "agent=writer"], "tickets"),
        (["alertname=Unlabelled"], "tickets"),
    ],
)
def test_routes_by_severity(labels: list[str], receiver: str) -> None:
    result = amtool("config", "routes", "test", f"--config.file={CONFIG_PATH}", *labels)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [receiver]


def test_every_alert_severity_has_a_route() -> None:
    routed = {route["matchers"][0] for route in CONFIG["route"]["routes"]}
    for rule in rules():
        if "alert" in rule:
            assert f'severity="{rule["labels"]["severity"]}"' in routed


def test_receivers_are_webhooks() -> None:
    receivers = {receiver["name"]: receiver for receiver in CONFIG["receivers"]}
    assert set(receivers) == {"pager", "tickets"}
    for receiver in receivers.values():
        assert receiver["webhook_configs"][0]["url"].startswith("http")


def test_pages_inhibit_tickets_of_the_same_agent_only() -> None:
    [rule] = [r for r in CONFIG["inhibit_rules"] if 'severity="page"' in r["source_matchers"]]
    assert rule["target_matchers"] == ['severity="ticket"']
    assert rule["equal"] == ["agent"]
    # Pages without an agent (ControlPlaneDown) must not inhibit every ticket without one.
    assert 'agent=~".+"' in rule["source_matchers"]


def test_control_plane_down_inhibits_stale_sidecar_config() -> None:
    assert {
        "source_matchers": ['alertname="ControlPlaneDown"'],
        "target_matchers": ['alertname="SidecarConfigStale"'],
    } in CONFIG["inhibit_rules"]


def test_inhibit_rules_name_existing_alerts() -> None:
    alerts = {rule["alert"] for rule in rules() if "alert" in rule}
    for inhibit in CONFIG["inhibit_rules"]:
        for matcher in inhibit["source_matchers"] + inhibit["target_matchers"]:
            if matcher.startswith("alertname="):
                assert matcher.split("=", 1)[1].strip('"') in alerts, matcher
