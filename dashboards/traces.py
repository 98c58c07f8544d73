"""The "AgentMesh / Traces" dashboard: Tempo searches around one agent, by status, duration and caller.

Where "AgentMesh / Agent" shows an agent's calls as metrics, this dashboard
lists the calls themselves: TraceQL searches over the spans the sidecars write
(sidecar/filters/tracing.py), each row opening its trace. The searches read the
sidecar's resource attribute `agentmesh.agent` (the sidecar's own agent) and the
span attributes `gen_ai.agent.name` (the agent called: on a SERVER span the
sidecar's agent, on a CLIENT span the callee) and `agentmesh.source_agent` (the
caller, on CLIENT spans).
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard
from grafana_foundation_sdk.models import dashboard as dashboard_models

from dashboards import agent
from dashboards._panels import PROMETHEUS, mesh_links, row, trace_search

UID = "agentmesh-traces"
TITLE = "AgentMesh / Traces"

# Span status choices as TraceQL conditions. The sidecar sets ERROR on failed calls and leaves
# successful ones UNSET (never OK), so "ok" is "not error"; `true` is TraceQL's match-everything.
STATUS = {"any": "true", "error": "status = error", "ok": "status != error"}
DEFAULT_STATUS = "any"
# Durations to search above, as TraceQL duration literals. 2s is the Collector's keep-every-trace
# threshold (collectors/otel-collector.yaml): above it every trace is kept, below it 10% are.
MIN_DURATIONS = ("250ms", "500ms", "1s", "2s", "5s", "10s", "30s")
DEFAULT_MIN_DURATION = "2s"

# Spans of the agent's own sidecar (its inbound and outbound calls) and callers' spans of calls to it.
THROUGH_AGENT = '(resource.agentmesh.agent = "$agent" || span.gen_ai.agent.name = "$agent")'
# The agent's inbound calls, as its sidecar saw them (SERVER) and as its callers' sidecars did (CLIENT).
TO_AGENT = 'span.gen_ai.agent.name = "$agent"'

THROUGH_AGENT_QUERY = f"{{ {THROUGH_AGENT} && $status }} | select(span.rpc.service, span.rpc.method)"
FAILED_QUERY = (
    f"{{ {TO_AGENT} && status = error }} | select(span.agentmesh.source_agent, span.rpc.method, "
    "span.rpc.grpc.status_code, statusMessage)"
)
SLOW_QUERY = (
    f"{{ {TO_AGENT} && kind = server && duration > $min_duration && $status }} "
    "| select(span.rpc.method, span.gen_ai.agent.version, span.gen_ai.response.model)"
)
BY_CALLER_QUERY = (
    f"{{ {TO_AGENT} && kind = client && $status }} "
    "| select(span.agentmesh.source_agent, span.rpc.method, span.rpc.grpc.status_code)"
)


def _agent_variable() -> dashboard.QueryVariable:
    """Every agent some sidecar has routed a call to (its own inbound calls or a caller's outbound ones)."""
    return (
        dashboard.QueryVariable("agent")
        .label("Agent")
        .datasource(PROMETHEUS)
        .query("label_values(agentmesh_requests_total, destination_agent)")
        .refresh(dashboard_models.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dashboard_models.VariableSort.ALPHABETICAL_ASC)
    )


def _custom_variable(name: str, label: str, choices: dict[str, str], default: str) -> dashboard.CustomVariable:
    """A single-valued variable over fixed choices, text -> value (Grafana's `text : value` list)."""
    options = [
        dashboard_models.VariableOption(text=text, value=value, selected=text == default)
        for text, value in choices.items()
    ]
    return (
        dashboard.CustomVariable(name)
        .label(label)
        .values(",".join(f"{text} : {value}" for text, value in choices.items()))
        .options(options)
        .current(dashboard_models.VariableOption(text=default, value=choices[default], selected=True))
    )


def _to_agent_dashboard() -> dashboard.DashboardLink:
    """Opens "AgentMesh / Agent" for the selected agent over the same time range."""
    return (
        dashboard.DashboardLink("Agent $agent: metrics")
        .type(dashboard_models.DashboardLinkType.LINK)
        .url(f"/d/{agent.UID}?var-agent=$agent")
        .icon("dashboard")
        .tooltip(f"{agent.TITLE} for $agent")
        .keep_time(True)
    )


def build() -> dashboard.Dashboard:
    """The dashboard builder (rendered by dashboards.generate)."""
    return (
        dashboard.Dashboard(TITLE)
        .uid(UID)
        .description("Tempo searches around one agent: traces through it, failed calls, slow calls, calls by caller.")
        .tags(["agentmesh"])
        .editable()
        .refresh("1m")
        .time("now-1h", "now")
        .timezone("browser")
        .link(mesh_links())
        .link(_to_agent_dashboard())
        .with_variable(_agent_variable())
        .with_variable(_custom_variable("status", "Status", STATUS, DEFAULT_STATUS).allow_custom_value(False))
        .with_variable(
            _custom_variable(
                "min_duration", "Slower than", {value: value for value in MIN_DURATIONS}, DEFAULT_MIN_DURATION
            ).allow_custom_value(True)
        )
        .with_row(row("$agent"))
        .with_panel(
            trace_search(
                "Traces through $agent",
                THROUGH_AGENT_QUERY,
                description="Traces with a span of this agent's sidecar or a caller's span calling it, filtered "
                "by the Status variable. Traces without an error or a span over 2 s are sampled (10%).",
            )
        )
        .with_row(row("Failed and slow calls"))
        .with_panel(
            trace_search(
                "Failed calls to $agent",
                FAILED_QUERY,
                description="Calls to this agent that ended in error, seen by its sidecar (SERVER span) or by a "
                "caller's sidecar (CLIENT span: also calls that never reached it). The Collector keeps them all.",
            )
        )
        .with_panel(
            trace_search(
                "Calls to $agent slower than $min_duration",
                SLOW_QUERY,
                description="Inbound calls whose SERVER span took longer than the Slower than variable, filtered by "
                "Status. Every trace over 2 s is kept; shorter ones are sampled (10%).",
            )
        )
        .with_row(row("Callers"))
        .with_panel(
            trace_search(
                "Calls to $agent by caller",
                BY_CALLER_QUERY,
                description="Callers' CLIENT spans of calls to this agent, with the calling agent "
                "(agentmesh.source_agent), method and gRPC status code; filtered by Status.",
            )
        )
    )
