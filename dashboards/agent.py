"""The "AgentMesh / Agent" dashboard: one agent, templated by agent, version and method.

Rate, errors and duration by method; a latency heatmap whose exemplars open
the call's trace in Tempo; calls in flight, replica health and retries; the
agent's versions side by side for canary rollouts; its own outbound calls;
contracts, access and tokens; and a Tempo search for its failed or slow calls.
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard
from grafana_foundation_sdk.models import dashboard as dashboard_models

from dashboards._panels import (
    PROMETHEUS,
    error_ratio,
    latency_heatmap,
    latency_quantile,
    mesh_links,
    prom,
    request_rate,
    row,
    stat_panel,
    state_timeline,
    time_series,
    trace_search,
)

UID = "agentmesh-agent"
TITLE = "AgentMesh / Agent"

# The agent's inbound calls, narrowed by the dashboard's variables.
SELECTED = 'direction="inbound",agent="$agent",version=~"$version",rpc_method=~"$method"'
# Every version and method of the agent (for side-by-side comparisons).
AGENT = 'direction="inbound",agent="$agent"'
# The agent's own calls to other agents.
OUTBOUND = 'direction="outbound",agent="$agent"'
# Other agents' calls to this one, as their sidecars route them.
CALLERS = 'direction="outbound",destination_agent="$agent"'


def _variable(name: str, label: str, query: str, *, multi: bool) -> dashboard.QueryVariable:
    variable = (
        dashboard.QueryVariable(name)
        .label(label)
        .datasource(PROMETHEUS)
        .query(query)
        .refresh(dashboard_models.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dashboard_models.VariableSort.ALPHABETICAL_ASC)
    )
    if multi:
        variable = variable.multi(True).include_all(True).all_value(".*")
    return variable


def build() -> dashboard.Dashboard:
    """The dashboard builder (rendered by dashboards.generate)."""
    return (
        dashboard.Dashboard(TITLE)
        .uid(UID)
        .description("One agent: RED by method, latency with traces, health, retries, canary versions, dependencies.")
        .tags(["agentmesh"])
        .editable()
        .refresh("30s")
        .time("now-3h", "now")
        .timezone("browser")
        .link(mesh_links())
        .with_variable(
            _variable(
                "agent", "Agent", 'label_values(agentmesh_requests_total{direction="inbound"}, agent)', multi=False
            )
        )
        .with_variable(
            _variable(
                "version",
                "Version",
                'label_values(agentmesh_requests_total{direction="inbound",agent="$agent"}, version)',
                multi=True,
            )
        )
        .with_variable(
            _variable(
                "method",
                "Method",
                'label_values(agentmesh_requests_total{direction="inbound",agent="$agent"}, rpc_method)',
                multi=True,
            )
        )
        # Headline numbers for the selection.
        .with_row(row("$agent"))
        .with_panel(stat_panel("Calls/s", "reqps", prom(request_rate(SELECTED))))
        .with_panel(
            stat_panel(
                "Failed calls",
                "percentunit",
                prom(error_ratio(SELECTED)),
                thresholds=[(None, "green"), (0.001, "orange"), (0.01, "red")],
                decimals=2,
            )
        )
        .with_panel(stat_panel("p99 duration", "s", prom(latency_quantile(0.99, SELECTED))))
        .with_panel(
            stat_panel(
                "SLO target",
                "percentunit",
                prom('agent:agentmesh_slo_availability_target:ratio{agent="$agent"}'),
                description="The availability target of the agent's manifest, or the mesh default (0.99).",
                decimals=2,
            )
        )
        .with_panel(
            stat_panel(
                "Error budget burn (1h / 6h)",
                "suffix:x",
                prom('agent:agentmesh_error_budget_burn:rate1h{agent="$agent"}', "1h"),
                prom('agent:agentmesh_error_budget_burn:rate6h{agent="$agent"}', "6h"),
                description="1 spends the 30-day budget in exactly 30 days. Pages fire above 14.4 (1h) and 6 (6h).",
                thresholds=[(None, "green"), (1, "orange"), (6, "red")],
                decimals=1,
            )
        )
        .with_panel(
            stat_panel(
                "Healthy replicas",
                "none",
                prom('sum(agentmesh_upstream_healthy{agent="$agent",version=~"$version"})', "healthy"),
                prom('count(agentmesh_upstream_healthy{agent="$agent",version=~"$version"})', "replicas"),
            )
        )
        # RED by method.
        .with_row(row("Methods"))
        .with_panel(
            time_series("Calls/s by method", "reqps", prom(request_rate(SELECTED, "rpc_method"), "{{rpc_method}}"))
        )
        .with_panel(
            time_series(
                "Failed calls by method",
                "percentunit",
                prom(error_ratio(SELECTED, "rpc_method"), "{{rpc_method}}"),
            )
        )
        .with_panel(
            time_series(
                "Duration by method (p50, p99)",
                "s",
                prom(latency_quantile(0.5, SELECTED, "rpc_method"), "p50 {{rpc_method}}"),
                prom(latency_quantile(0.99, SELECTED, "rpc_method"), "p99 {{rpc_method}}", exemplar=True),
                description="Dots are exemplars: single calls with their trace id; click one to open the trace.",
            )
        )
        .with_panel(
            time_series(
                "Calls/s by status",
                "reqps",
                prom(request_rate(SELECTED, "grpc_code"), "{{grpc_code}}"),
                stacked=True,
            )
        )
        # Latency distribution with exemplars.
        .with_row(row("Latency"))
        .with_panel(
            latency_heatmap(
                "Call duration",
                f"sum by (le) (rate(agentmesh_request_duration_seconds_bucket{{{SELECTED}}}[$__rate_interval]))",
                description="Calls per second in each duration bucket. Exemplar dots carry the trace id of one "
                "call in that bucket; hovering shows a link to the trace in Tempo.",
            )
        )
        # Load, health and retries.
        .with_row(row("Load and health"))
        .with_panel(
            time_series(
                "Calls in flight",
                "short",
                prom(
                    "sum by (version) "
                    '(agentmesh_requests_in_flight{direction="inbound",agent="$agent",version=~"$version"})',
                    "inbound {{version}}",
                ),
                prom(
                    'sum by (destination_agent) (agentmesh_requests_in_flight{direction="outbound",agent="$agent"})',
                    "outbound to {{destination_agent}}",
                ),
                width=8,
            )
        )
        .with_panel(
            state_timeline(
                "Replica health",
                prom('agentmesh_upstream_healthy{agent="$agent",version=~"$version"}', "{{version}} {{instance}}"),
                mappings={"1": ("healthy", "green"), "0": ("unhealthy", "red")},
                description="The sidecar's health check of its agent, per replica.",
                width=8,
            )
        )
        .with_panel(
            time_series(
                "Retries/s",
                "reqps",
                prom(
                    "sum by (destination_agent, reason) "
                    '(rate(agentmesh_retries_total{agent="$agent"}[$__rate_interval]))',
                    "to {{destination_agent}}: {{reason}}",
                ),
                prom(
                    "sum by (agent, reason) "
                    '(rate(agentmesh_retries_total{destination_agent="$agent"}[$__rate_interval]))',
                    "from {{agent}}: {{reason}}",
                ),
                description="Retries of this agent's calls to others, and of others' calls to this agent.",
                width=8,
            )
        )
        # Canary: every version of the agent side by side, whatever the version variable says.
        .with_row(row("Versions"))
        .with_panel(
            time_series(
                "Traffic split seen by callers",
                "percentunit",
                prom(
                    f"{request_rate(CALLERS, 'destination_version')} / scalar({request_rate(CALLERS)})",
                    "{{destination_version}}",
                ),
                description="Share of callers' calls routed to each version (the weighted split in action).",
                stacked=True,
                max_value=1,
                width=6,
            )
        )
        .with_panel(
            time_series("Calls/s by version", "reqps", prom(request_rate(AGENT, "version"), "{{version}}"), width=6)
        )
        .with_panel(
            time_series(
                "Failed calls by version", "percentunit", prom(error_ratio(AGENT, "version"), "{{version}}"), width=6
            )
        )
        .with_panel(
            time_series(
                "p99 duration by version",
                "s",
                prom(latency_quantile(0.99, AGENT, "version"), "{{version}}", exemplar=True),
                width=6,
            )
        )
        # What the agent calls.
        .with_row(row("Dependencies"))
        .with_panel(
            time_series(
                "Outbound calls/s by callee",
                "reqps",
                prom(request_rate(OUTBOUND, "destination_agent"), "{{destination_agent}}"),
                width=8,
            )
        )
        .with_panel(
            time_series(
                "Failed outbound calls by callee",
                "percentunit",
                prom(error_ratio(OUTBOUND, "destination_agent"), "{{destination_agent}}"),
                width=8,
            )
        )
        .with_panel(
            time_series(
                "Outbound p99 by callee",
                "s",
                prom(latency_quantile(0.99, OUTBOUND, "destination_agent"), "{{destination_agent}}", exemplar=True),
                width=8,
            )
        )
        # Contracts, access, tokens.
        .with_row(row("Contracts, access and tokens"))
        .with_panel(
            time_series(
                "Contract violations/s",
                "reqps",
                prom(
                    "sum by (rpc_method, side, reason) "
                    '(rate(agentmesh_contract_violations_total{agent="$agent"}[$__rate_interval]))',
                    "{{side}} {{rpc_method}}: {{reason}}",
                ),
                width=8,
            )
        )
        .with_panel(
            time_series(
                "Access denials/s",
                "reqps",
                prom(
                    "sum by (source_agent, policy) "
                    '(rate(agentmesh_access_denied_total{destination_agent="$agent"}[$__rate_interval]))',
                    "{{source_agent}} ({{policy}})",
                ),
                width=8,
            )
        )
        .with_panel(
            time_series(
                "Tokens/s by model",
                "short",
                prom(
                    'sum by (model, token_type) (rate(agentmesh_tokens_total{agent="$agent"}[$__rate_interval]))',
                    "{{model}} {{token_type}}",
                ),
                stacked=True,
                width=8,
            )
        )
        # Traces.
        .with_row(row("Traces"))
        .with_panel(
            trace_search(
                "Failed or slow calls",
                '{ span.gen_ai.agent.name = "$agent" && kind = server && (status = error || duration > 2s) }',
                description="Server spans of this agent that failed or took over 2 s (the Collector keeps all of "
                "those; other traces are sampled).",
            )
        )
    )
