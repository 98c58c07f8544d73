"""The building blocks every AgentMesh dashboard shares: datasources, PromQL and panels.

The PromQL here is the dashboards' reading of the canonical metrics
(ARCHITECTURE.md §5): which gRPC codes count as failures (the same set as the
SLO recording rules in collectors/prometheus/rules/recording.yml), how an
error ratio stays defined when nothing failed, how a latency quantile is taken
from the histogram buckets. Panel constructors fix the look (units, legends,
sizes) so the dashboards read alike.
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import (
    bargauge,
    common,
    dashboard,
    heatmap,
    prometheus,
    stat,
    statetimeline,
    table,
    tempo,
    timeseries,
)
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.models import common as common_models
from grafana_foundation_sdk.models import dashboard as dashboard_models
from grafana_foundation_sdk.models import heatmap as heatmap_models
from grafana_foundation_sdk.models import prometheus as prometheus_models

# Datasource UIDs, as provisioned in dashboards/provisioning/datasources/agentmesh.yaml.
PROMETHEUS = dashboard_models.DataSourceRef(type_val="prometheus", uid="prometheus")
TEMPO = dashboard_models.DataSourceRef(type_val="tempo", uid="tempo")

# gRPC codes a server is to blame for (OpenTelemetry's gRPC server-error set, the ones mapped to HTTP 5xx).
ERROR_CODES = "UNKNOWN|DEADLINE_EXCEEDED|UNIMPLEMENTED|INTERNAL|UNAVAILABLE|DATA_LOSS"
RATE_WINDOW = "$__rate_interval"

REQUESTS = "agentmesh_requests_total"
DURATION_BUCKETS = "agentmesh_request_duration_seconds_bucket"

Query = cogbuilder.Builder[cogvariants.Dataquery]
Panel = cogbuilder.Builder[dashboard_models.Panel]


def _by(labels: str) -> str:
    return f" by ({labels})" if labels else ""


def request_rate(selector: str, by: str = "") -> str:
    """Calls per second matching `selector` (label matchers without braces), summed by `by`."""
    return f"sum{_by(by)} (rate({REQUESTS}{{{selector}}}[{RATE_WINDOW}]))"


def error_rate(selector: str, by: str = "") -> str:
    """Failed calls per second (server-side gRPC codes)."""
    return f'sum{_by(by)} (rate({REQUESTS}{{{selector},grpc_code=~"{ERROR_CODES}"}}[{RATE_WINDOW}]))'


def error_ratio(selector: str, by: str = "") -> str:
    """Failed calls / all calls; 0 (not "no data") for a group where nothing failed."""
    total = request_rate(selector, by)
    return f"({error_rate(selector, by)} or 0 * {total}) / {total}"


def latency_quantile(quantile: float, selector: str, by: str = "") -> str:
    """The `quantile` of call duration, interpolated within the histogram buckets."""
    grouping = f"le, {by}" if by else "le"
    return (
        f"histogram_quantile({quantile}, sum by ({grouping}) (rate({DURATION_BUCKETS}{{{selector}}}[{RATE_WINDOW}])))"
    )


def prom(expr: str, legend: str = "", *, instant: bool = False, exemplar: bool = False) -> prometheus.Dataquery:
    """A Prometheus query; `legend` uses Grafana's {{label}} syntax."""
    query = prometheus.Dataquery().expr(expr).datasource(PROMETHEUS)
    if legend:
        query = query.legend_format(legend)
    query = query.instant().format(prometheus_models.PromQueryFormat.TABLE) if instant else query.range()
    if exemplar:
        query = query.exemplar(True)
    return query


def row(title: str) -> dashboard.Row:
    return dashboard.Row(title)


def _legend() -> common.VizLegendOptions:
    return (
        common.VizLegendOptions()
        .display_mode(common_models.LegendDisplayMode.TABLE)
        .placement(common_models.LegendPlacement.BOTTOM)
        .show_legend(True)
        .calcs(["mean", "max", "lastNotNull"])
        .sort_by("Mean")
        .sort_desc(True)
    )


def time_series(
    title: str,
    unit: str,
    *queries: Query,
    description: str = "",
    stacked: bool = False,
    width: int = 12,
    height: int = 8,
    links: list[dashboard.DashboardLink] | None = None,
    min_value: float | None = 0,
    max_value: float | None = None,
) -> timeseries.Panel:
    """A line graph with a table legend (mean, max, last) sorted by mean."""
    panel = (
        timeseries.Panel()
        .title(title)
        .datasource(PROMETHEUS)
        .unit(unit)
        .span(width)
        .height(height)
        .legend(_legend())
        .tooltip(
            common.VizTooltipOptions()
            .mode(common_models.TooltipDisplayMode.MULTI)
            .sort(common_models.SortOrder.DESCENDING)
        )
        .line_width(1)
        .fill_opacity(20 if stacked else 5)
        .show_points(common_models.VisibilityMode.NEVER)
    )
    if description:
        panel = panel.description(description)
    if stacked:
        panel = panel.stacking(common.StackingConfig().mode(common_models.StackingMode.NORMAL))
    if min_value is not None:
        panel = panel.min(min_value)
    if max_value is not None:
        panel = panel.max(max_value)
    if links:
        panel = panel.data_links(list(links))
    for query in queries:
        panel = panel.with_target(query)
    return panel


def stat_panel(
    title: str,
    unit: str,
    *queries: Query,
    description: str = "",
    width: int = 4,
    height: int = 4,
    thresholds: list[tuple[float | None, str]] | None = None,
    mappings: dict[str, tuple[str, str]] | None = None,
    decimals: int | None = None,
) -> stat.Panel:
    """A single big number (last value), coloured by `thresholds` [(from, colour), ...]."""
    panel = (
        stat.Panel()
        .title(title)
        .datasource(PROMETHEUS)
        .unit(unit)
        .span(width)
        .height(height)
        .reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]))
        .graph_mode(common_models.BigValueGraphMode.AREA)
        .color_mode(common_models.BigValueColorMode.VALUE)
    )
    if description:
        panel = panel.description(description)
    if decimals is not None:
        panel = panel.decimals(decimals)
    panel = panel.thresholds(_thresholds(thresholds or [(None, "green")]))
    if mappings:
        panel = panel.mappings(_value_mappings(mappings))
    for query in queries:
        panel = panel.with_target(query)
    return panel


def bar_gauge(
    title: str, unit: str, *queries: Query, description: str = "", width: int = 12, height: int = 8
) -> bargauge.Panel:
    """Horizontal bars, one per series (instant queries over the dashboard's range)."""
    panel = (
        bargauge.Panel()
        .title(title)
        .datasource(PROMETHEUS)
        .unit(unit)
        .span(width)
        .height(height)
        .orientation(common_models.VizOrientation.HORIZONTAL)
        .display_mode(common_models.BarGaugeDisplayMode.GRADIENT)
        .reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .thresholds(_thresholds([(None, "blue")]))
    )
    if description:
        panel = panel.description(description)
    for query in queries:
        panel = panel.with_target(query)
    return panel


def state_timeline(
    title: str,
    *queries: Query,
    mappings: dict[str, tuple[str, str]],
    description: str = "",
    width: int = 12,
    height: int = 8,
) -> statetimeline.Panel:
    """One lane per series, coloured by value (e.g. healthy / unhealthy)."""
    panel = (
        statetimeline.Panel()
        .title(title)
        .datasource(PROMETHEUS)
        .span(width)
        .height(height)
        .mappings(_value_mappings(mappings))
        .show_value(common_models.VisibilityMode.NEVER)
    )
    if description:
        panel = panel.description(description)
    for query in queries:
        panel = panel.with_target(query)
    return panel


def latency_heatmap(title: str, expr: str, *, description: str = "", width: int = 24, height: int = 9) -> heatmap.Panel:
    """Call durations per histogram bucket over time, with exemplars (dots that open the trace in Tempo)."""
    query = (
        prometheus.Dataquery()
        .expr(expr)
        .datasource(PROMETHEUS)
        .range()
        .format(prometheus_models.PromQueryFormat.HEATMAP)
        .legend_format("{{le}}")
        .exemplar(True)
    )
    panel = (
        heatmap.Panel()
        .title(title)
        .datasource(PROMETHEUS)
        .span(width)
        .height(height)
        .calculate(False)
        .y_axis(heatmap.YAxisConfig().unit("s"))
        .cell_values(heatmap.CellValues().unit("reqps"))
        .color(heatmap.HeatmapColorOptions().mode(heatmap_models.HeatmapColorMode.SCHEME).scheme("Spectral").steps(64))
        .rows_frame(heatmap.RowsHeatmapOptions().layout(common_models.HeatmapCellLayout.LE))
        .exemplars_color("rgba(255,0,255,0.7)")
        .with_target(query)
    )
    if description:
        panel = panel.description(description)
    return panel


def summary_table(
    title: str, *queries: Query, columns: dict[str, str], units: dict[str, str], description: str = "", height: int = 8
) -> table.Panel:
    """Instant queries joined on their labels into one row per group.

    `columns` renames each query's value column ("Value #A" -> "Requests/s");
    `units` sets the unit of a renamed column.
    """
    panel = (
        table.Panel()
        .title(title)
        .datasource(PROMETHEUS)
        .span(24)
        .height(height)
        .with_transformation(dashboard_models.DataTransformerConfig(id_val="merge", options={}))
        .with_transformation(
            dashboard_models.DataTransformerConfig(
                id_val="organize", options={"excludeByName": {"Time": True}, "renameByName": columns}
            )
        )
    )
    if description:
        panel = panel.description(description)
    for name, unit in units.items():
        panel = panel.override_by_name(name, [dashboard_models.DynamicConfigValue(id_val="unit", value=unit)])
    for query in queries:
        panel = panel.with_target(query)
    return panel


def trace_search(title: str, traceql: str, *, description: str = "", limit: int = 20, height: int = 9) -> table.Panel:
    """A Tempo TraceQL search shown as a table of traces (each row opens the trace)."""
    query = tempo.TempoQuery().datasource(TEMPO).query_type("traceql").query(traceql).limit(limit)
    panel = table.Panel().title(title).datasource(TEMPO).span(24).height(height).with_target(query)
    if description:
        panel = panel.description(description)
    return panel


def link_to_dashboard(title: str, uid: str, variable: str, label: str) -> dashboard.DashboardLink:
    """A data link that opens dashboard `uid` with `var-<variable>` set to the clicked series' `label`."""
    return (
        dashboard.DashboardLink(title)
        .type(dashboard_models.DashboardLinkType.LINK)
        .url(f"/d/{uid}?var-{variable}=${{__field.labels.{label}}}&${{__url_time_range}}")
    )


def mesh_links() -> dashboard.DashboardLink:
    """The dashboards menu linking every AgentMesh dashboard (by tag), keeping time range and variables."""
    return (
        dashboard.DashboardLink("AgentMesh")
        .type(dashboard_models.DashboardLinkType.DASHBOARDS)
        .tags(["agentmesh"])
        .as_dropdown(True)
        .include_vars(True)
        .keep_time(True)
    )


def _thresholds(steps: list[tuple[float | None, str]]) -> dashboard.ThresholdsConfig:
    return (
        dashboard.ThresholdsConfig()
        .mode(dashboard_models.ThresholdsMode.ABSOLUTE)
        .steps([dashboard_models.Threshold(value=value, color=color) for value, color in steps])
    )


def _value_mappings(mappings: dict[str, tuple[str, str]]) -> list[dashboard_models.ValueMapping]:
    return [
        dashboard_models.ValueMap(
            options={
                value: dashboard_models.ValueMappingResult(text=text, color=color, index=index)
                for index, (value, (text, color)) in enumerate(mappings.items())
            }
        )
    ]
