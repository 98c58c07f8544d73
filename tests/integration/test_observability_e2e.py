"""The observability stack end to end: every dashboard and recording-rule query has data from a real mesh.

A real control plane, the example agents with their sidecars (researcher v1
and v2, writer, planner) registered with it, and a real Prometheus running
collectors/prometheus (see tests/integration/prometheus_server.py) that finds
the sidecars through the control plane's `/sd/prometheus`. Policies applied
with the CLI shape the traffic: a 50/50 split of the researcher's versions,
retries of calls to the writer, and an access rule that denies the writer's
calls to the researcher. The test then drives what an operator would want to
see on the dashboards: successful plans (planner → researcher → writer),
requests that break the planner's contract, denied calls, and a fault (the
writer agent stops, so its calls fail and are retried).

Every PromQL expression of every panel of every generated dashboard, with its
template variables set to real values the way Grafana sets them, and every
recording rule's expression must evaluate through the HTTP API without error
and return data. Expressions that only have data when something goes wrong
are listed in `NEEDS_A_FAULT`; the faults that are cheap to cause here are
caused, and their expressions must have data too. Exemplars must carry the
trace ids of the calls.

Prometheus is Debian's `prometheus` package (`make test` installs it); the
module skips without it. Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import grpc
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from dashboards import generate
from tests.integration.controlplane import ControlPlaneProcess
from tests.integration.mesh import AgentUnderTest, Messages, agent_with_sidecar, create_join_token, unary
from tests.integration.procs import wait_for
from tests.integration.prometheus_server import (
    PROMETHEUS,
    PrometheusError,
    PrometheusServer,
    prometheus_config,
    running_prometheus,
)
from tests.unit.collectors.promql import rules

pytestmark = pytest.mark.skipif(PROMETHEUS is None, reason="prometheus not installed (apt-get install prometheus)")

PLAN = "/planning.v1.Planner/Plan"
SEARCH = "/research.v1.Researcher/Search"
WAIT = 30.0
# The sidecars of the mesh as Prometheus discovers them: (agent, version).
SIDECARS = {("planner", "v1"), ("researcher", "v1"), ("researcher", "v2"), ("writer", "v1")}
DENY_POLICY = "no-writer"

# Grafana's built-in variables, as Grafana sets them for these dashboards: the Prometheus datasource is
# provisioned with a 15s scrape interval (dashboards/provisioning), so $__rate_interval is 4 x 15s; the
# dashboards open on the last 3 hours.
BUILTIN_VARIABLES = {"__rate_interval": "1m", "__interval": "15s", "__range": "10800s", "__range_s": "10800"}
_VARIABLE = re.compile(r"\$(\w+)")
_LABEL_VALUES = re.compile(r"^label_values\((?P<selector>.+),\s*(?P<label>\w+)\)$")


@dataclass(frozen=True)
class Fault:
    """Why an expression has no data in a healthy mesh, and whether this test causes that fault."""

    reason: str
    caused: bool


# Expressions that only have data when something goes wrong, by dashboard / panel / query.
# Those `caused` here must have data; the others must only evaluate without error.
NEEDS_A_FAULT: dict[str, Fault] = {
    "agent.json / Retries/s / A": Fault("a call the agent's sidecar made was retried", caused=True),
    "agent.json / Retries/s / B": Fault("a call to the agent was retried", caused=True),
    "mesh-overview.json / Failed calls/s by caller / A": Fault(
        "a call failed with a server-error code (no `or 0 * ...` fallback in a topk)", caused=True
    ),
}


# --- the dashboards' and rules' queries --------------------------------------------------------------------------


@dataclass(frozen=True)
class PanelQuery:
    """One Prometheus query of one dashboard panel."""

    dashboard: str
    panel: str
    ref: str
    expr: str

    @property
    def where(self) -> str:
        return f"{self.dashboard} / {self.panel} / {self.ref}"


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def dashboard_models() -> dict[str, dict[str, Any]]:
    """Every generated dashboard's JSON model, by file name."""
    return {name: json.loads(text) for name, text in generate.render().items()}


def panel_queries() -> list[PanelQuery]:
    found = []
    for name, model in dashboard_models().items():
        for panel in _panels(model["panels"]):
            for target in panel.get("targets", []):
                datasource = target.get("datasource") or panel.get("datasource") or {}
                if datasource.get("type") == "prometheus":
                    found.append(PanelQuery(name, panel["title"], target["refId"], target["expr"]))
    return found


def recording_rules() -> list[tuple[str, str]]:
    """(name, expression) of every recording rule; rules sharing a name are told apart by their labels."""
    found = []
    for rule in rules():
        if "record" in rule:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(rule.get("labels", {}).items()))
            found.append((f"{rule['record']}{{{labels}}}" if labels else rule["record"], rule["expr"]))
    return found


PANEL_QUERIES = panel_queries()
RECORDING_RULES = recording_rules()


def _regex_escape(value: str) -> str:
    """A value of a multi-value variable as Grafana writes it into a PromQL regex (escaped for the string)."""
    return re.sub(r"([$^*{}\[\]'+?.()|])", r"\\\\\1", value.replace("\\", "\\" * 4))


def substitute(expr: str, variables: dict[str, str]) -> str:
    """`expr` with every $variable replaced; an unknown variable is an error, not silently kept."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in variables:
            raise KeyError(f"no value for ${name} in {expr}")
        return variables[name]

    return _VARIABLE.sub(value, expr)


def variable_choices(prometheus: PrometheusServer, model: dict[str, Any]) -> list[dict[str, str]]:
    """Every combination of template-variable values a user can pick, read from Prometheus as Grafana does.

    A single-value variable branches over each of its values; a multi-value one takes all its values
    (Grafana's regex `(a|b)`), which is what "All" shows.
    """
    choices: list[dict[str, str]] = [dict(BUILTIN_VARIABLES)]
    for variable in model.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue  # custom variables (the Traces dashboard's status, duration) hold no PromQL
        match = _LABEL_VALUES.match(variable["query"])
        assert match, f"${variable['name']}: expected label_values(selector, label), got {variable['query']}"
        expanded = []
        for chosen in choices:
            selector = substitute(match["selector"], chosen)
            values: list[str] = prometheus.api(f"label/{match['label']}/values", [("match[]", selector)])
            assert values, f"${variable['name']} has no values for {selector}"
            if variable.get("multi") or variable.get("includeAll"):
                escaped = [_regex_escape(v) for v in values]
                joined = escaped[0] if len(escaped) == 1 else f"({'|'.join(escaped)})"
                expanded.append({**chosen, variable["name"]: joined})
            else:
                expanded.extend({**chosen, variable["name"]: value} for value in values)
        choices = expanded
    return choices


# --- the mesh, Prometheus and the traffic ------------------------------------------------------------------------


@dataclass
class ObservedMesh:
    prometheus: PrometheusServer
    control_plane: ControlPlaneProcess
    agents: dict[tuple[str, str], AgentUnderTest]
    # The trace id of one successful Plan call, sent in its traceparent.
    trace_id: str
    # Unix time before the first call.
    started: float
    variables: dict[str, list[dict[str, str]]]


def _policy(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "agentmesh.io/v1", "kind": kind, "metadata": {"name": name}, "spec": spec}


POLICIES = [
    _policy(
        "TrafficPolicy",
        "researcher-canary",
        {"target": "researcher", "split": [{"version": "v1", "weight": 50}, {"version": "v2", "weight": 50}]},
    ),
    _policy(
        "TrafficPolicy",
        "writer-retries",
        {
            "target": "writer",
            "retries": {
                "attempts": 2,
                "retry_on": ["unavailable"],
                "retry_non_idempotent": True,
                "backoff": {"base_interval": "10ms"},
            },
        },
    ),
    _policy(
        "AccessPolicy",
        "researcher-access",
        {
            "target": "researcher",
            "default_action": "allow",
            "rules": [{"name": DENY_POLICY, "action": "deny", "from": {"agents": ["writer"]}}],
        },
    ),
]


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


def sidecar_metric(agent: AgentUnderTest, name: str, **labels: str) -> float:
    """The sum of a sample over the series of one sidecar's /metrics matching `labels`."""
    with urllib.request.urlopen(f"{agent.ports.admin_url}/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


def _xds_versions(agent: AgentUnderTest) -> dict[str, str]:
    versions: dict[str, str] = _get_json(f"{agent.ports.admin_url}/config_dump")["xds"]["versions"]
    return versions


def _all_healthy(planner: AgentUnderTest, clusters: tuple[str, ...]) -> bool:
    found = _get_json(f"{planner.ports.admin_url}/config_dump")["clusters"]
    return all(any(e["healthy"] for e in found.get(name, {}).get("endpoints", [])) for name in clusters)


def _unix(timestamp: str) -> float:
    """An RFC 3339 time from the Prometheus API (nanoseconds, Z) as Unix seconds."""
    trimmed = re.sub(r"(\.\d{1,6})\d*", r"\1", timestamp).replace("Z", "+00:00")
    return datetime.fromisoformat(trimmed).timestamp()


def _last_scrapes(prometheus: PrometheusServer) -> list[float] | None:
    """When every target of the mesh is up: the time of each one's last scrape; else None."""
    targets = prometheus.api("targets", [("state", "active")])["activeTargets"]
    if len(targets) != len(SIDECARS) + 1 or any(t["health"] != "up" for t in targets):
        return None
    return [_unix(t["lastScrape"]) for t in targets]


def wait_for_scrape(prometheus: PrometheusServer, what: str) -> float:
    """Waits until every target is up and was scraped after now; returns the latest of those scrapes."""
    since = time.time()
    scrapes: list[float] = []

    def scraped() -> bool:
        scrapes[:] = _last_scrapes(prometheus) or [since]
        return min(scrapes) > since

    prometheus.wait(scraped, f"every target up and scraped after {what}")
    return max(scrapes)


def _rules_evaluated_after(prometheus: PrometheusServer, since: float) -> bool:
    groups = prometheus.api("rules")["groups"]
    return bool(groups) and all(_unix(group["lastEvaluation"]) > since for group in groups)


class Traffic:
    """Calls made the way the mesh's clients make them: to the planner's inbound and through sidecars' egress."""

    def __init__(self, agents: dict[tuple[str, str], AgentUnderTest]) -> None:
        self.messages = Messages()
        self.agents = agents
        self.planner = agents["planner", "v1"]
        self._plan_response = self.messages.cls("planning.v1.PlanResponse")

    def plan(self, topic: str, *, metadata: tuple[tuple[str, str], ...] = ()) -> Any:
        request = self.messages("planning.v1.PlanRequest", topic=topic, max_sections=2)
        with grpc.insecure_channel(self.planner.ports.inbound_address) as channel:
            return unary(channel, PLAN, request, self._plan_response, timeout=20, metadata=metadata)

    def failing_plan(self, topic: str) -> grpc.StatusCode:
        with pytest.raises(grpc.RpcError) as failed:
            self.plan(topic)
        code: grpc.StatusCode = failed.value.code()
        return code

    def search_from_writer(self) -> grpc.StatusCode:
        """The writer's sidecar egress calling the researcher; the status code (OK when it succeeds)."""
        writer = self.agents["writer", "v1"]
        request = self.messages("research.v1.SearchRequest", query="who may ask", max_results=1)
        with grpc.insecure_channel(f"127.0.0.1:{writer.ports.egress_grpc}") as channel:
            try:
                unary(
                    channel,
                    SEARCH,
                    request,
                    self.messages.cls("research.v1.SearchResponse"),
                    timeout=10,
                    metadata=(("x-agentmesh-target", "researcher"),),
                )
            except grpc.RpcError as exc:
                code: grpc.StatusCode = exc.code()
                return code
        return grpc.StatusCode.OK

    def researcher_versions_called(self) -> set[str]:
        return {
            version
            for version in ("v1", "v2")
            if sidecar_metric(
                self.planner,
                "agentmesh_requests_total",
                direction="outbound",
                destination_agent="researcher",
                destination_version=version,
                grpc_code="OK",
            )
        }


def drive_traffic(prometheus: PrometheusServer, agents: dict[tuple[str, str], AgentUnderTest], trace_id: str) -> None:
    """Healthy traffic, then the fault; each kind in two rounds with a scrape between them.

    A counter's first sample is the value it was created with, so a rate only
    sees what was added after that: the second round makes every series move
    between two samples, as it would in a mesh with steady traffic.
    """
    traffic = Traffic(agents)
    for round_ in ("first", "second"):
        # Successful plans, until the canary split has sent calls to both researcher versions.
        for _ in range(2):
            traffic.plan("service meshes")
        wait_for(
            lambda: (
                traffic.plan("canary releases") is not None and traffic.researcher_versions_called() == {"v1", "v2"}
            ),
            what="plans calling both researcher versions",
            timeout=WAIT,
        )
        # Requests that break the planner's contract (topic: 3 to 200 characters).
        for _ in range(2):
            assert traffic.failing_plan("x") == grpc.StatusCode.INVALID_ARGUMENT
        # The writer may not call the researcher.
        for _ in range(2):
            assert traffic.search_from_writer() == grpc.StatusCode.PERMISSION_DENIED
        wait_for_scrape(prometheus, f"the {round_} round of healthy traffic")
    # One plan in a sampled trace of the caller's, the last successful one: its exemplar stays in place.
    traffic.plan("exemplars", metadata=(("traceparent", f"00-{trace_id}-00f067aa0ba902b7-01"),))
    # The fault: the writer agent stops, its sidecar stays (and, probing rarely, still reports it healthy):
    # Draft fails UNAVAILABLE, the planner's sidecar retries it, and the plan fails.
    writer = agents["writer", "v1"]
    assert writer.agent is not None
    writer.agent.stop()
    for round_ in ("first", "second"):
        for _ in range(2):
            assert traffic.failing_plan("failures") == grpc.StatusCode.UNAVAILABLE
        last_scrape = wait_for_scrape(prometheus, f"the {round_} round of failing calls")
    assert sidecar_metric(traffic.planner, "agentmesh_retries_total", destination_agent="writer") > 0
    prometheus.wait(lambda: _rules_evaluated_after(prometheus, last_scrape), "the rules evaluated after the traffic")


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ObservedMesh]:
    tmp = tmp_path_factory.mktemp("observability")
    with contextlib.ExitStack() as stack:
        control_plane = ControlPlaneProcess(tmp, tmp / "cp.db")
        stack.callback(control_plane.process.stop)
        prometheus = stack.enter_context(
            running_prometheus(tmp, prometheus_config(f"127.0.0.1:{control_plane.http_port}"))
        )
        link = {"address": control_plane.address}

        def token(agent: str) -> str:
            return create_join_token(control_plane.address, agent)

        # mTLS between the sidecars: access rules act on certificate identities. The planner's listener is
        # permissive, since the test calls it without a certificate.
        agents = {
            ("researcher", "v1"): stack.enter_context(
                agent_with_sidecar(
                    tmp,
                    "researcher",
                    version="v1",
                    control_plane=link,
                    join_token=token("researcher"),
                    slo={"availability": 0.995},
                )
            ),
            ("researcher", "v2"): stack.enter_context(
                agent_with_sidecar(tmp, "researcher", version="v2", control_plane=link, join_token=token("researcher"))
            ),
            # Probed once an hour: when the agent stops, its sidecar keeps forwarding and calls fail.
            ("writer", "v1"): stack.enter_context(
                agent_with_sidecar(
                    tmp, "writer", control_plane=link, join_token=token("writer"), health={"interval": "1h"}
                )
            ),
            ("planner", "v1"): stack.enter_context(
                agent_with_sidecar(
                    tmp, "planner", control_plane=link, join_token=token("planner"), identity={"mode": "permissive"}
                )
            ),
        }
        planner = agents["planner", "v1"]
        clusters = ("agent/researcher/v1", "agent/researcher/v2", "agent/writer/v1")
        wait_for(lambda: _all_healthy(planner, clusters), what="the planner's routes to every agent", timeout=WAIT)

        # Prometheus has seen every target before the policy is pushed: the push durations move while it looks.
        wait_for_scrape(prometheus, "the mesh started")
        policy = tmp / "policy.yaml"
        policy.write_text(yaml.safe_dump_all(POLICIES))
        applied = control_plane.cli("policy", "apply", "-f", str(policy))
        assert applied.returncode == 0, applied.stderr
        version = re.search(r"policy version (\d+)", applied.stdout + applied.stderr)
        assert version, applied.stdout + applied.stderr
        # Snapshot versions are p<policy version>-g<generation>; listeners (access) and routes (split, retries).
        wait_for(
            lambda: all(
                _xds_versions(agent).get(kind, "").startswith(f"p{version[1]}-")
                for agent in agents.values()
                for kind in ("lds", "rds")
            ),
            what="every sidecar on the applied policy",
            timeout=WAIT,
        )

        started = time.time()
        trace_id = uuid.uuid4().hex
        drive_traffic(prometheus, agents, trace_id)
        variables = {name: variable_choices(prometheus, model) for name, model in dashboard_models().items()}
        yield ObservedMesh(prometheus, control_plane, agents, trace_id, started, variables)


# --- the tests ---------------------------------------------------------------------------------------------------


def test_sidecars_are_discovered_through_the_control_plane(observed: ObservedMesh) -> None:
    targets = observed.prometheus.api("targets", [("state", "active")])["activeTargets"]
    sidecars = {
        (t["labels"]["agent"], t["labels"]["version"], t["labels"]["instance"])
        for t in targets
        if t["labels"]["job"] == "agentmesh-sidecars"
    }
    assert sidecars == {
        (agent, version, f"127.0.0.1:{under_test.ports.admin}")
        for (agent, version), under_test in observed.agents.items()
    }
    assert {t["labels"]["team"] for t in targets if t["labels"]["job"] == "agentmesh-sidecars"} == {"examples"}
    assert [t["labels"]["instance"] for t in targets if t["labels"]["job"] == "agentmesh-control-plane"] == [
        f"127.0.0.1:{observed.control_plane.http_port}"
    ]


def test_template_variables_list_the_mesh(observed: ObservedMesh) -> None:
    agents = [choice["agent"] for choice in observed.variables["agent.json"]]
    assert sorted(agents) == ["planner", "researcher", "writer"]
    researcher = next(c for c in observed.variables["agent.json"] if c["agent"] == "researcher")
    assert researcher["version"] == "(v1|v2)"
    assert researcher["method"] == r"/research\\.v1\\.Researcher/Search"


def _evaluate(prometheus: PrometheusServer, expr: str) -> list[dict[str, Any]]:
    try:
        return prometheus.query(expr)
    except PrometheusError as exc:
        raise AssertionError(f"{expr}\n  failed: {exc}") from None


def _has_values(result: list[dict[str, Any]]) -> bool:
    """Whether a query result has a number to show (NaN, e.g. a quantile of no calls, draws nothing)."""
    return any(sample["value"][1] != "NaN" for sample in result)


@pytest.mark.parametrize("query", PANEL_QUERIES, ids=[q.where for q in PANEL_QUERIES])
def test_dashboard_query_has_data(observed: ObservedMesh, query: PanelQuery) -> None:
    """Evaluates without error for every choice of variables; has data for at least one (one agent's page)."""
    with_data = []
    for variables in observed.variables[query.dashboard]:
        expr = substitute(query.expr, variables)
        if _has_values(_evaluate(observed.prometheus, expr)):
            with_data.append(variables.get("agent", "-"))
    fault = NEEDS_A_FAULT.get(query.where)
    if fault is None or fault.caused:
        assert with_data, f"{query.where}: no data for any choice of variables\n  {query.expr}"


@pytest.mark.parametrize(("name", "expr"), RECORDING_RULES, ids=[name for name, _ in RECORDING_RULES])
def test_recording_rule_expression_has_data(observed: ObservedMesh, name: str, expr: str) -> None:
    result = _evaluate(observed.prometheus, expr)
    assert result, f"{name}: no data\n  {expr}"
    if name.startswith("agent:"):
        assert {s["metric"].get("agent") for s in result} == {"planner", "researcher", "writer"}, result
    assert not [s for s in result if s["value"][1] == "NaN"], result


def test_every_rule_is_healthy(observed: ObservedMesh) -> None:
    groups = observed.prometheus.api("rules")["groups"]
    unhealthy = [
        (rule["name"], rule.get("lastError")) for group in groups for rule in group["rules"] if rule["health"] != "ok"
    ]
    assert not unhealthy
    assert sum(len(group["rules"]) for group in groups) == len(rules())


def test_denials_name_the_policy(observed: ObservedMesh) -> None:
    denied = observed.prometheus.query('agentmesh_access_denied_total{destination_agent="researcher"}')
    # The writer is named by its certificate; the policy as `<AccessPolicy>/<rule>`.
    expected = {("writer", f"researcher-access/{DENY_POLICY}")}
    assert {(s["metric"]["source_agent"], s["metric"]["policy"]) for s in denied} == expected


def test_exemplars_carry_the_calls_trace_ids(observed: ObservedMesh) -> None:
    def exemplars(selector: str) -> dict[str, set[str]]:
        """Trace ids of the exemplars of the matching series, by agent."""
        data = observed.prometheus.api(
            "query_exemplars",
            [
                ("query", f"agentmesh_request_duration_seconds_bucket{{{selector}}}"),
                ("start", str(observed.started - 60)),
                ("end", str(time.time() + 60)),
            ],
        )
        found: dict[str, set[str]] = {}
        for series in data:
            for exemplar in series["exemplars"]:
                found.setdefault(series["seriesLabels"]["agent"], set()).add(exemplar["labels"].get("trace_id", ""))
        return found

    inbound = exemplars('direction="inbound"')
    assert set(inbound) == {"planner", "researcher", "writer"}
    assert all(re.fullmatch("[0-9a-f]{32}", trace) for traces in inbound.values() for trace in traces), inbound
    # The planner's sidecar continued the caller's sampled trace; its id is the exemplar of that call.
    assert observed.trace_id in exemplars('agent="planner",direction="inbound",grpc_code="OK"')["planner"]


def test_fault_table_names_real_queries() -> None:
    assert set(NEEDS_A_FAULT) <= {q.where for q in PANEL_QUERIES}
