"""The "AgentMesh / Mesh overview" dashboard: the whole mesh on one screen.

Rate, errors and duration of every agent's inbound calls, who calls whom,
contract violations and access denials, model tokens by team and model, and the
control plane's health. Each per-agent series links to the "AgentMesh / Agent"
dashboard for that agent.
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard

from dashboards import agent
from dashboards._panels import (
    bar_gauge,
    error_rate,
    error_ratio,
    latency_quantile,
    link_to_dashboard,
    mesh_links,
    prom,
    request_rate,
    row,
    stat_panel,
    summary_table,
    time_series,
)

UID = "agentmesh-mesh-overview"
TITLE = "AgentMesh / Mesh overview"

INBOUND = 'direction="inbound"'


def build() -> dashboard.Dashboard:
    """The dashboard builder (rendered by dashboards.generate)."""
    to_agent = [link_to_dashboard("Open agent ${__field.labels.agent}", agent.UID, "agent", "agent")]
    return (
        dashboard.Dashboard(TITLE)
        .uid(UID)
        .description("Traffic, failures and latency of every agent, callers, contracts, access, tokens, control plane.")
        .tags(["agentmesh"])
        .editable()
        .refresh("30s")
        .time("now-3h", "now")
        .timezone("browser")
        .link(mesh_links())
        # Headline numbers.
        .with_row(row("Mesh"))
        .with_panel(
            stat_panel(
                "Calls/s",
                "reqps",
                prom(request_rate(INBOUND)),
                description="Inbound calls per second, all agents.",
            )
        )
        .with_panel(
            stat_panel(
                "Failed calls",
                "percentunit",
                prom(error_ratio(INBOUND)),
                description="Share of calls failed with a server-side gRPC code "
                "(UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS).",
                thresholds=[(None, "green"), (0.001, "orange"), (0.01, "red")],
                decimals=2,
            )
        )
        .with_panel(
            stat_panel(
                "p99 duration",
                "s",
                prom(latency_quantile(0.99, INBOUND)),
                description="99th percentile of inbound call duration, all agents.",
            )
        )
        .with_panel(
            stat_panel(
                "Healthy agents",
                "none",
                prom("sum(max by (agent) (agentmesh_upstream_healthy))", "healthy"),
                prom("count(max by (agent) (agentmesh_upstream_healthy))", "agents"),
                description="Agents with at least one replica passing its health check, out of all agents.",
            )
        )
        .with_panel(
            stat_panel(
                "Control plane",
                "none",
                prom('min(up{job="agentmesh-control-plane"})'),
                mappings={"1": ("up", "green"), "0": ("down", "red")},
                thresholds=[(None, "red"), (1, "green")],
            )
        )
        .with_panel(
            stat_panel(
                "Sidecars without xDS",
                "none",
                prom("count(agentmesh_xds_connected == 0) or vector(0)"),
                description="Sidecars serving their last configuration because their xDS stream is down.",
                thresholds=[(None, "green"), (1, "red")],
            )
        )
        # RED per agent.
        .with_row(row("Agents"))
        .with_panel(
            time_series(
                "Calls/s by agent",
                "reqps",
                prom(request_rate(INBOUND, "agent"), "{{agent}}"),
                links=to_agent,
            )
        )
        .with_panel(
            time_series(
                "Failed calls by agent",
                "percentunit",
                prom(error_ratio(INBOUND, "agent"), "{{agent}}"),
                description="Share of each agent's inbound calls that failed with a server-side gRPC code.",
                links=to_agent,
            )
        )
        .with_panel(
            time_series(
                "p99 duration by agent",
                "s",
                prom(latency_quantile(0.99, INBOUND, "agent"), "{{agent}}", exemplar=True),
                description="Dots are exemplars: single calls with their trace id; click one to open the trace.",
                links=to_agent,
            )
        )
        .with_panel(
            time_series(
                "Error budget burn rate (1h) by agent",
                "suffix:x",
                prom("agent:agentmesh_error_budget_burn:rate1h", "{{agent}}"),
                description="How fast each agent spends its 30-day availability error budget: 1 spends it exactly "
                "in 30 days; the page fires above 14.4 over 1h and 5m (collectors/prometheus/rules).",
                links=to_agent,
            )
        )
        .with_panel(
            summary_table(
                "Agents now",
                prom(request_rate(INBOUND, "agent"), instant=True),
                prom(error_ratio(INBOUND, "agent"), instant=True),
                prom(latency_quantile(0.5, INBOUND, "agent"), instant=True),
                prom(latency_quantile(0.99, INBOUND, "agent"), instant=True),
                prom("agent:agentmesh_slo_availability_target:ratio", instant=True),
                prom("agent:agentmesh_error_budget_burn:rate1h", instant=True),
                prom("agent:agentmesh_error_budget_burn:rate6h", instant=True),
                columns={
                    "Value #A": "Calls/s",
                    "Value #B": "Failed",
                    "Value #C": "p50",
                    "Value #D": "p99",
                    "Value #E": "SLO target",
                    "Value #F": "Burn 1h",
                    "Value #G": "Burn 6h",
                },
                units={
                    "Calls/s": "reqps",
                    "Failed": "percentunit",
                    "p50": "s",
                    "p99": "s",
                    "SLO target": "percentunit",
                    "Burn 1h": "suffix:x",
                    "Burn 6h": "suffix:x",
                },
                description="One row per agent. The SLO target is the agent manifest's, else the mesh default.",
            )
        )
        # Who calls whom.
        .with_row(row("Callers"))
        .with_panel(
            bar_gauge(
                "Top callers (calls in range)",
                "short",
                prom(
                    "topk(10, sum by (source_agent, destination_agent) "
                    '(increase(agentmesh_requests_total{direction="inbound"}[$__range])))',
                    "{{source_agent}} → {{destination_agent}}",
                    instant=True,
                ),
            )
        )
        .with_panel(
            time_series(
                "Failed calls/s by caller",
                "reqps",
                prom(
                    f"topk(10, {error_rate(INBOUND, 'source_agent, destination_agent')})",
                    "{{source_agent}} → {{destination_agent}}",
                ),
                description="The caller pairs with the most failed calls.",
            )
        )
        # Contracts and access.
        .with_row(row("Contracts and access"))
        .with_panel(
            time_series(
                "Contract violations/s",
                "reqps",
                prom(
                    "sum by (agent, side, reason) (rate(agentmesh_contract_violations_total[$__rate_interval]))",
                    "{{agent}} {{side}}: {{reason}}",
                ),
                description="Messages that broke an agent's contract. Request side: a caller sent the wrong "
                "schema (INVALID_ARGUMENT); response side: the agent answered with one (INTERNAL).",
            )
        )
        .with_panel(
            time_series(
                "Access denials/s",
                "reqps",
                prom(
                    "sum by (source_agent, destination_agent, policy) "
                    "(rate(agentmesh_access_denied_total[$__rate_interval]))",
                    "{{source_agent}} → {{destination_agent}} ({{policy}})",
                ),
                description="Calls refused by access policy, by caller, callee and the policy that refused.",
            )
        )
        # Model tokens.
        .with_row(row("Tokens"))
        .with_panel(
            time_series(
                "Tokens/s by team and model",
                "short",
                prom("sum by (team, model) (rate(agentmesh_tokens_total[$__rate_interval]))", "{{team}} {{model}}"),
                stacked=True,
            )
        )
        .with_panel(
            bar_gauge(
                "Tokens in range by team",
                "short",
                prom(
                    "sum by (team, token_type) (increase(agentmesh_tokens_total[$__range]))",
                    "{{team}} {{token_type}}",
                    instant=True,
                ),
                width=6,
            )
        )
        .with_panel(
            bar_gauge(
                "Tokens in range by model",
                "short",
                prom(
                    "sum by (model, token_type) (increase(agentmesh_tokens_total[$__range]))",
                    "{{model}} {{token_type}}",
                    instant=True,
                ),
                width=6,
            )
        )
        # Control plane (details in "AgentMesh / Control plane").
        .with_row(row("Control plane"))
        .with_panel(
            time_series(
                "Connected sidecars",
                "short",
                prom("sum(agentmesh_cp_connected_proxies)", "ADS streams"),
                prom("sum(agentmesh_xds_connected)", "sidecars connected"),
                width=8,
            )
        )
        .with_panel(
            time_series(
                "Configuration NACKs by type",
                "short",
                prom("sum by (type) (increase(agentmesh_cp_nacks_total[$__rate_interval]))", "{{type}}"),
                description="Configuration sidecars rejected, as counted by the control plane.",
                width=8,
            )
        )
        .with_panel(
            time_series(
                "Policy version",
                "none",
                prom("max(agentmesh_cp_policy_version)", "version"),
                width=8,
                min_value=None,
            )
        )
    )
