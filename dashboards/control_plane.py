"""The "AgentMesh / Control plane" dashboard: is configuration reaching the sidecars?

Connected proxies, how long a published configuration takes to be ACKed,
NACKs by resource type (seen by the control plane and by the sidecars), and
the policy version being served.
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard

from dashboards._panels import mesh_links, prom, row, stat_panel, time_series

UID = "agentmesh-control-plane"
TITLE = "AgentMesh / Control plane"

PUSH_BUCKETS = "agentmesh_cp_push_duration_seconds_bucket"


def _push_quantile(quantile: float) -> str:
    return f"histogram_quantile({quantile}, sum by (le, type) (rate({PUSH_BUCKETS}[$__rate_interval])))"


def build() -> dashboard.Dashboard:
    """The dashboard builder (rendered by dashboards.generate)."""
    return (
        dashboard.Dashboard(TITLE)
        .uid(UID)
        .description("Control plane health: connected proxies, configuration push latency, NACKs, policy version.")
        .tags(["agentmesh"])
        .editable()
        .refresh("30s")
        .time("now-3h", "now")
        .timezone("browser")
        .link(mesh_links())
        .with_row(row("Now"))
        .with_panel(
            stat_panel(
                "Control plane",
                "none",
                prom('min(up{job="agentmesh-control-plane"})'),
                mappings={"1": ("up", "green"), "0": ("down", "red")},
                thresholds=[(None, "red"), (1, "green")],
            )
        )
        .with_panel(stat_panel("Connected proxies", "none", prom("sum(agentmesh_cp_connected_proxies)")))
        .with_panel(
            stat_panel(
                "Sidecars without xDS",
                "none",
                prom("count(agentmesh_xds_connected == 0) or vector(0)"),
                thresholds=[(None, "green"), (1, "red")],
            )
        )
        .with_panel(stat_panel("Policy version", "none", prom("max(agentmesh_cp_policy_version)"), decimals=0))
        .with_panel(
            stat_panel(
                "Push p99",
                "s",
                prom(f"histogram_quantile(0.99, sum by (le) (rate({PUSH_BUCKETS}[$__rate_interval])))"),
                description="Time from publishing a configuration to a sidecar ACKing it, all types.",
                thresholds=[(None, "green"), (1, "orange"), (5, "red")],
            )
        )
        .with_panel(
            stat_panel(
                "NACKs in range",
                "none",
                prom("sum(increase(agentmesh_cp_nacks_total[$__range]))", instant=True),
                thresholds=[(None, "green"), (1, "red")],
                decimals=0,
            )
        )
        .with_row(row("Distribution"))
        .with_panel(
            time_series(
                "Connected proxies",
                "short",
                prom("sum(agentmesh_cp_connected_proxies)", "control plane: ADS streams"),
                prom("sum(agentmesh_xds_connected)", "sidecars: connected"),
                prom("count(agentmesh_xds_connected)", "sidecars: all"),
                description="The control plane's count of streams next to the sidecars' own view.",
            )
        )
        .with_panel(
            time_series(
                "Push duration by type (p50, p99)",
                "s",
                prom(_push_quantile(0.5), "p50 {{type}}"),
                prom(_push_quantile(0.99), "p99 {{type}}"),
                description="From publishing a type's version to a sidecar ACKing it.",
            )
        )
        .with_panel(
            time_series(
                "ACKed pushes/s by type",
                "ops",
                prom("sum by (type) (rate(agentmesh_cp_push_duration_seconds_count[$__rate_interval]))", "{{type}}"),
            )
        )
        .with_panel(
            time_series(
                "Policy version",
                "none",
                prom("max(agentmesh_cp_policy_version)", "served"),
                description="Steps when a new policy set is published.",
                min_value=None,
            )
        )
        .with_row(row("Rejections"))
        .with_panel(
            time_series(
                "NACKs by type (control plane)",
                "short",
                prom("sum by (type) (increase(agentmesh_cp_nacks_total[$__rate_interval]))", "{{type}}"),
                description="Responses sidecars rejected, counted where they were sent.",
            )
        )
        .with_panel(
            time_series(
                "Rejected updates by sidecar",
                "short",
                prom(
                    "sum by (agent, instance, type) (increase(agentmesh_xds_rejected_total[$__rate_interval]))",
                    "{{agent}} {{instance}} {{type}}",
                ),
                description="Updates each sidecar refused to apply (it keeps the previous configuration); "
                "its /config_dump shows why.",
            )
        )
    )
