"""A real Prometheus running collectors/prometheus, and a real Alertmanager running collectors/alertmanager.

Prometheus gets the repository's prometheus.yml with only the addresses and
intervals changed: sidecars come from an HTTP service discovery server started
here (the control plane's /sd/prometheus format), each one a small HTTP server
exposing canonical agentmesh metrics that move with every scrape. The tests
check that series carry the discovered agent/version/team, that exemplars are
stored, that every recording and alerting rule evaluates without error, and
that the SLO rules produce the expected targets and a firing burn-rate alert.
Alertmanager gets alertmanager.yml as is and must apply its inhibitions.

Binaries come from Debian's `prometheus` and `prometheus-alertmanager`
packages; each test skips when its binary is absent. Waits are bounded.
"""

from __future__ import annotations

import json
import shutil
import threading
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder

from tests.integration.procs import ROOT, Process, free_port, running, wait_for

PROMETHEUS = shutil.which("prometheus")
ALERTMANAGER = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
COLLECTORS = ROOT / "collectors"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
WAIT = 30.0


class FakeSidecar:
    """One sidecar's admin endpoint: canonical metrics, with calls recorded on every scrape."""

    def __init__(self, agent: str, version: str, *, failing: bool, slo_target: float | None = None) -> None:
        self.agent = agent
        self.version = version
        self.failing = failing
        self.registry = r = CollectorRegistry()
        route = ("direction", "source_agent", "destination_agent", "destination_version", "rpc_method", "grpc_code")
        self.requests = Counter("agentmesh_requests", "Calls.", route, registry=r)
        self.duration = Histogram(
            "agentmesh_request_duration_seconds", "Duration.", route, buckets=(0.01, 0.1, 1, 10), registry=r
        )
        healthy = Gauge("agentmesh_upstream_healthy", "Health.", ("agent", "version"), registry=r)
        healthy.labels(agent, version).set(1)
        Gauge("agentmesh_xds_connected", "ADS stream up.", registry=r).set(1)
        self.rejected = Counter("agentmesh_xds_rejected", "NACKs.", ("type",), registry=r)
        for type_label in ("lds", "rds", "cds", "eds"):
            self.rejected.labels(type_label)
        self.tokens = Counter("agentmesh_tokens", "Tokens.", ("agent", "team", "model", "token_type"), registry=r)
        if slo_target is not None:
            target = Gauge("agentmesh_slo_availability_target", "Target.", ("agent",), registry=r)
            target.labels(agent).set(slo_target)
        self.server = _serve(self._metrics)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"

    def _metrics(self, path: str, accept: str) -> tuple[int, bytes, str]:
        if path != "/metrics":
            return 404, b"", "text/plain"
        labels = ("inbound", "planner", self.agent, self.version, "/scribe.v1.Scribe/Draft")
        self.requests.labels(*labels, "OK").inc(3)
        self.duration.labels(*labels, "OK").observe(0.05, {"trace_id": TRACE_ID})
        if self.failing:
            self.requests.labels(*labels, "UNAVAILABLE").inc(3)
            self.duration.labels(*labels, "UNAVAILABLE").observe(5)
            self.rejected.labels("rds").inc()
        self.tokens.labels(self.agent, "content", "small-model", "input").inc(100)
        encoder, content_type = choose_encoder(accept)
        return 200, encoder(self.registry), content_type


class _Handler(BaseHTTPRequestHandler):
    respond: Callable[[str, str], tuple[int, bytes, str]]

    def do_GET(self) -> None:
        status, body, content_type = self.respond(self.path, self.headers.get("Accept", ""))
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _serve(respond: Callable[[str, str], tuple[int, bytes, str]]) -> ThreadingHTTPServer:
    handler = type("Handler", (_Handler,), {"respond": staticmethod(respond)})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _stop(server: ThreadingHTTPServer) -> None:
    server.shutdown()
    server.server_close()


@dataclass
class Stack:
    prometheus: Process
    url: str
    sidecars: dict[str, FakeSidecar]
    dropped_address: str

    def api(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=5) as response:
            reply = json.load(response)
        assert reply["status"] == "success", reply
        return reply["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.api("query", query=expr)["result"]
        return result

    def wait(self, check: Callable[[], bool], what: str) -> None:
        wait_for(check, what=what, timeout=WAIT, process=self.prometheus)


def _prometheus_config(sd_url: str, control_plane: str) -> dict[str, Any]:
    """The repository's prometheus.yml, pointed at this test's servers and sped up."""
    with (COLLECTORS / "prometheus" / "prometheus.yml").open() as handle:
        config: dict[str, Any] = yaml.safe_load(handle)
    config["global"] = {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"}
    config.pop("alerting")
    config["rule_files"] = [str(COLLECTORS / "prometheus" / path) for path in config["rule_files"]]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    jobs["agentmesh-sidecars"]["http_sd_configs"] = [{"url": sd_url, "refresh_interval": "1s"}]
    jobs["agentmesh-control-plane"]["static_configs"] = [{"targets": [control_plane]}]
    config["scrape_configs"] = [jobs["agentmesh-sidecars"], jobs["agentmesh-control-plane"]]
    return config


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One Prometheus for the module's tests, which only read from it."""
    if PROMETHEUS is None:
        pytest.skip("prometheus not installed (apt-get install prometheus)")
    sidecars = {
        "writer": FakeSidecar("writer", "v1", failing=True),
        "researcher": FakeSidecar("researcher", "v2", failing=False, slo_target=0.995),
    }
    unnamed = FakeSidecar("", "v1", failing=False)

    def control_plane(path: str, accept: str) -> tuple[int, bytes, str]:
        if path == "/sd/prometheus":
            groups = [
                {
                    "targets": [sidecars["writer"].address],
                    "labels": {"agent": "writer", "version": "v1", "team": "content", "__metrics_path__": "/metrics"},
                },
                # No team: relabelled to "unknown".
                {"targets": [sidecars["researcher"].address], "labels": {"agent": "researcher", "version": "v2"}},
                # No agent: dropped.
                {"targets": [unnamed.address], "labels": {"version": "v1", "team": "content"}},
            ]
            return 200, json.dumps(groups).encode(), "application/json"
        if path == "/metrics":
            registry = CollectorRegistry()
            Gauge("agentmesh_cp_connected_proxies", "Streams.", registry=registry).set(2)
            Gauge("agentmesh_cp_policy_version", "Policy.", registry=registry).set(7)
            Counter("agentmesh_cp_nacks", "NACKs.", ("type",), registry=registry).labels("rds")
            encoder, content_type = choose_encoder(accept)
            return 200, encoder(registry), content_type
        return 404, b"", "text/plain"

    tmp_path = tmp_path_factory.mktemp("prometheus")
    cp = _serve(control_plane)
    cp_address = f"127.0.0.1:{cp.server_address[1]}"
    config_path = tmp_path / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(_prometheus_config(f"http://{cp_address}/sd/prometheus", cp_address)))
    port = free_port()
    argv = [
        str(PROMETHEUS),
        f"--config.file={config_path}",
        f"--storage.tsdb.path={tmp_path / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--enable-feature=exemplar-storage",
    ]
    try:
        with running("prometheus", argv, tmp_path) as process:
            url = f"http://127.0.0.1:{port}"
            wait_for(
                lambda: urllib.request.urlopen(f"{url}/-/ready", timeout=1).status == 200, what="ready", process=process
            )
            yield Stack(process, url, sidecars, unnamed.address)
    finally:
        for server in [cp, unnamed.server, *(sidecar.server for sidecar in sidecars.values())]:
            _stop(server)


def _targets_up(stack: Stack) -> bool:
    active = stack.api("targets", state="active")["activeTargets"]
    jobs = [target["labels"]["job"] for target in active if target["health"] == "up"]
    return sorted(jobs) == ["agentmesh-control-plane", "agentmesh-sidecars", "agentmesh-sidecars"]


def test_sidecars_are_discovered_and_labelled(stack: Stack) -> None:
    stack.wait(lambda: _targets_up(stack), "the two sidecars and the control plane scraped")
    stack.wait(lambda: len(stack.query("agentmesh_requests_total")) >= 3, "request series")

    identities = {
        (s["metric"]["agent"], s["metric"]["version"], s["metric"]["team"], s["metric"]["instance"])
        for s in stack.query('agentmesh_requests_total{job="agentmesh-sidecars"}')
    }
    assert identities == {
        ("writer", "v1", "content", stack.sidecars["writer"].address),
        ("researcher", "v2", "unknown", stack.sidecars["researcher"].address),
    }
    # The sidecar's own agent/version labels are the ones kept (honor_labels), not renamed.
    healthy = {(s["metric"]["agent"], s["metric"]["version"]) for s in stack.query("agentmesh_upstream_healthy")}
    assert healthy == {("writer", "v1"), ("researcher", "v2")}
    assert stack.query('{exported_agent=~".+"}') == []
    assert stack.query('{job="agentmesh-sidecars", agent=""}') == []

    dropped = stack.api("targets", state="dropped")["droppedTargets"]
    assert stack.dropped_address in {target["discoveredLabels"]["__address__"] for target in dropped}


def test_exemplars_are_stored(stack: Stack) -> None:
    def exemplar_trace_ids() -> set[str]:
        data = stack.api(
            "query_exemplars", query='agentmesh_request_duration_seconds_bucket{agent="writer"}', start="0", end="2e9"
        )
        return {e["labels"].get("trace_id", "") for series in data for e in series["exemplars"]}

    stack.wait(lambda: TRACE_ID in exemplar_trace_ids(), "the trace_id exemplar")


def _all_rules_ok(stack: Stack) -> bool:
    groups = stack.api("rules")["groups"]
    return bool(groups) and all(rule["health"] == "ok" for group in groups for rule in group["rules"])


def test_every_rule_evaluates_without_error(stack: Stack) -> None:
    stack.wait(lambda: _targets_up(stack), "targets up")
    stack.wait(lambda: _all_rules_ok(stack), "every rule evaluated with health ok")
    groups = stack.api("rules")["groups"]
    names = {group["name"] for group in groups}
    assert {"agentmesh-slo", "agentmesh-latency", "agentmesh-slo-alerts", "agentmesh-control-plane-alerts"} <= names
    assert sum(len(group["rules"]) for group in groups) > 50


def _values(stack: Stack, expr: str) -> dict[str, float]:
    return {s["metric"].get("agent", ""): float(s["value"][1]) for s in stack.query(expr)}


def test_slo_rules_use_manifest_targets_or_the_default(stack: Stack) -> None:
    stack.wait(
        lambda: set(_values(stack, "agent:agentmesh_slo_availability_target:ratio")) == {"writer", "researcher"},
        "SLO targets for both agents",
    )
    assert _values(stack, "agent:agentmesh_slo_availability_target:ratio") == {"writer": 0.99, "researcher": 0.995}

    # writer fails half its calls: 50x its budget; researcher fails none.
    stack.wait(lambda: "writer" in _values(stack, "agent:agentmesh_error_budget_burn:rate5m"), "burn rates")
    stack.wait(
        lambda: _values(stack, "agent:agentmesh_error_budget_burn:rate5m").get("writer", 0) > 14.4,
        "writer burning fast",
    )
    stack.wait(
        lambda: _values(stack, "agent:agentmesh_request_errors:ratio_rate5m").get("researcher") == 0,
        "researcher's error ratio, zero although it has no failed-call series",
    )


def _firing(stack: Stack) -> set[tuple[str, str]]:
    return {
        (alert["labels"]["alertname"], alert["labels"].get("agent", ""))
        for alert in stack.api("alerts")["alerts"]
        if alert["state"] == "firing"
    }


def test_alerts_fire_from_scraped_metrics(stack: Stack) -> None:
    stack.wait(lambda: ("AgentErrorBudgetBurn1h", "writer") in _firing(stack), "the fast-burn page for writer")
    stack.wait(lambda: ("SidecarConfigRejected", "writer") in _firing(stack), "writer's NACK ticket")
    firing = _firing(stack)
    assert not {alert for alert in firing if alert[1] == "researcher"}
    assert ("ControlPlaneDown", "") not in firing


# --- Alertmanager ----------------------------------------------------------------


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[str]:
    if ALERTMANAGER is None:
        pytest.skip("alertmanager not installed (apt-get install prometheus-alertmanager)")
    port = free_port()
    argv = [
        ALERTMANAGER,
        f"--config.file={COLLECTORS / 'alertmanager' / 'alertmanager.yml'}",
        f"--storage.path={tmp_path / 'am'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",
    ]
    url = f"http://127.0.0.1:{port}"
    with running("alertmanager", argv, tmp_path) as process:
        wait_for(
            lambda: urllib.request.urlopen(f"{url}/-/ready", timeout=1).status == 200, what="ready", process=process
        )
        yield url


def _post_alerts(url: str, alerts: list[dict[str, str]]) -> None:
    body = json.dumps([{"labels": labels} for labels in alerts]).encode()
    request = urllib.request.Request(
        f"{url}/api/v2/alerts", data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200


def _states(url: str) -> dict[tuple[str, ...], str]:
    with urllib.request.urlopen(f"{url}/api/v2/alerts", timeout=5) as response:
        alerts = json.load(response)
    return {
        (a["labels"]["alertname"], a["labels"].get("agent", ""), a["labels"].get("type", "")): a["status"]["state"]
        for a in alerts
    }


def test_alertmanager_inhibits_redundant_alerts(alertmanager: str) -> None:
    _post_alerts(
        alertmanager,
        [
            {"alertname": "AgentDown", "agent": "researcher", "severity": "page"},
            {"alertname": "AgentUnhealthy", "agent": "researcher", "instance": "r1", "severity": "ticket"},
            {"alertname": "AgentUnhealthy", "agent": "writer", "instance": "w1", "severity": "ticket"},
            {"alertname": "ControlPlaneDown", "instance": "cp", "severity": "page"},
            {"alertname": "SidecarConfigStale", "agent": "writer", "instance": "w1", "severity": "ticket"},
            {"alertname": "SidecarConfigRejected", "agent": "writer", "type": "rds", "severity": "ticket"},
            {"alertname": "ControlPlaneNacksReceived", "type": "rds", "severity": "ticket"},
            {"alertname": "ControlPlaneNacksReceived", "type": "cds", "severity": "ticket"},
        ],
    )
    expected = {
        # A page on researcher silences its tickets.
        ("AgentDown", "researcher", ""): "active",
        ("AgentUnhealthy", "researcher", ""): "suppressed",
        # ... not writer's: the agent differs.
        ("AgentUnhealthy", "writer", ""): "active",
        # The control plane being down explains every stale sidecar.
        ("ControlPlaneDown", "", ""): "active",
        ("SidecarConfigStale", "writer", ""): "suppressed",
        # The sidecar's NACK alert covers the control plane's count of the same type only.
        ("SidecarConfigRejected", "writer", "rds"): "active",
        ("ControlPlaneNacksReceived", "", "rds"): "suppressed",
        # ControlPlaneDown has no agent, so it inhibits no ticket without one.
        ("ControlPlaneNacksReceived", "", "cds"): "active",
    }
    wait_for(lambda: _states(alertmanager) == expected, what="inhibitions applied", timeout=WAIT)
