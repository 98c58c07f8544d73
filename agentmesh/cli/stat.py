"""`agentmesh stat` and `agentmesh top`: live golden signals of each sidecar, like `linkerd viz stat`.

No Prometheus needed: the command reads each sidecar's admin `/metrics`
twice, `--window` apart, and computes from the difference, per sidecar (one
agent version): the success rate (calls that ended OK over all inbound calls,
as linkerd counts any non-zero grpc-status as a failure), requests per
second, latency percentiles from the `agentmesh_request_duration_seconds`
buckets (interpolated within a bucket, as PromQL's histogram_quantile), the
calls in flight and whether the agent passes its health check. `--window 0`
reads once and reports totals since each series was created.

Sidecars are named by admin URL (`--admin`) or found in a mesh file
(`-f mesh.yaml`: each agent's `listen.admin`). An unreachable sidecar is a
row with status "unreachable" and makes the exit code 1.
"""

from __future__ import annotations

import json
import math
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import click
import yaml
from prometheus_client.parser import text_string_to_metric_families

from agentmesh.config import ConfigError, ConfigIssue, parse_duration

DEFAULT_WINDOW = "2s"
DEFAULT_SCRAPE_TIMEOUT = 2.0
EXIT_UNREACHABLE = 1
QUANTILES = (0.5, 0.95, 0.99)

_REQUESTS = "agentmesh_requests_total"
_REQUESTS_CREATED = "agentmesh_requests_created"
_BUCKET = "agentmesh_request_duration_seconds_bucket"
_IN_FLIGHT = "agentmesh_requests_in_flight"
_HEALTHY = "agentmesh_upstream_healthy"
_INBOUND = "inbound"


@dataclass(frozen=True)
class Sidecar:
    """One sidecar to read: its admin URL and, when known from a mesh file, who it fronts."""

    admin: str
    agent: str = ""
    version: str = ""


@dataclass(frozen=True)
class Scrape:
    """The inbound figures of one read of a sidecar's /metrics."""

    monotonic: float
    wall: float
    agent: str
    version: str
    # grpc_code -> calls
    calls: dict[str, float]
    # bucket upper bound -> cumulative count, summed over methods, callers and codes
    buckets: dict[float, float]
    # earliest creation time (unix seconds) of an inbound request series
    first_created: float | None
    in_flight: float
    healthy: bool | None


@dataclass
class StatRow:
    """One line of `agentmesh stat`: figures of one sidecar over the window (None: no data)."""

    admin: str
    agent: str
    version: str
    status: str
    requests: float | None = None
    success_rate: float | None = None
    rps: float | None = None
    p50: float | None = None
    p95: float | None = None
    p99: float | None = None
    in_flight: float | None = None
    upstream_healthy: bool | None = None
    error: str = ""


@dataclass
class _Previous:
    scrapes: dict[str, Scrape] = field(default_factory=dict)


def parse_metrics(text: str, *, monotonic: float, wall: float) -> Scrape:
    """Reads the inbound request counters, duration buckets, in-flight and health gauges of one exposition."""
    calls: dict[str, float] = {}
    buckets: dict[float, float] = {}
    created: list[float] = []
    # No series yet: no call was ever started.
    in_flight = 0.0
    healthy: bool | None = None
    agent = version = ""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if sample.name == _HEALTHY:
                agent, version = labels.get("agent", agent), labels.get("version", version)
                healthy = bool(healthy or healthy is None) and sample.value >= 1
                continue
            if labels.get("direction") != _INBOUND:
                continue
            if sample.name == _REQUESTS:
                code = labels.get("grpc_code", "UNKNOWN")
                calls[code] = calls.get(code, 0.0) + sample.value
                agent = agent or labels.get("destination_agent", "")
                version = version or labels.get("destination_version", "")
            elif sample.name == _BUCKET:
                bound = float(labels["le"])
                buckets[bound] = buckets.get(bound, 0.0) + sample.value
            elif sample.name == _REQUESTS_CREATED:
                created.append(sample.value)
            elif sample.name == _IN_FLIGHT:
                in_flight += sample.value
    return Scrape(
        monotonic=monotonic,
        wall=wall,
        agent=agent,
        version=version,
        calls=calls,
        buckets=buckets,
        first_created=min(created) if created else None,
        in_flight=in_flight,
        healthy=healthy,
    )


def histogram_quantile(q: float, buckets: dict[float, float]) -> float | None:
    """The q-quantile (0..1) of cumulative histogram buckets, as PromQL's histogram_quantile.

    Linear interpolation inside the bucket holding the rank; a rank in the
    +Inf bucket answers the highest finite bound. None when there is no
    observation.
    """
    ordered = sorted(buckets.items())
    if not ordered or ordered[-1][1] <= 0:
        return None
    rank = q * ordered[-1][1]
    lower, below = 0.0, 0.0
    for bound, count in ordered:
        if count >= rank:
            if math.isinf(bound):
                return lower
            if count == below:
                return bound
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return lower


def figures(before: Scrape | None, after: Scrape) -> StatRow:
    """The row of one sidecar from two reads (or, without `before`, totals since the series were created)."""
    calls = dict(after.calls)
    buckets = dict(after.buckets)
    if before is not None:
        calls = {code: _increase(before.calls.get(code, 0.0), value) for code, value in calls.items()}
        buckets = {bound: _increase(before.buckets.get(bound, 0.0), value) for bound, value in buckets.items()}
        elapsed: float | None = after.monotonic - before.monotonic
    else:
        elapsed = after.wall - after.first_created if after.first_created is not None else None
    total = sum(calls.values())
    # Counters are floats in the exposition; calls are whole.
    row = StatRow(admin="", agent=after.agent, version=after.version, status="ok", requests=round(total))
    if total > 0:
        row.success_rate = calls.get("OK", 0.0) / total
    if elapsed is not None and elapsed > 0:
        row.rps = total / elapsed
    row.p50, row.p95, row.p99 = (histogram_quantile(q, buckets) for q in QUANTILES)
    row.in_flight = after.in_flight
    row.upstream_healthy = after.healthy
    return row


def _increase(before: float, after: float) -> float:
    # A counter that went down was reset (the sidecar restarted): count from zero.
    return after - before if after >= before else after


def scrape(sidecar: Sidecar, *, timeout: float = DEFAULT_SCRAPE_TIMEOUT) -> Scrape:
    """Reads one sidecar's /metrics; raises OSError (urllib.error.URLError) when it cannot."""
    request = urllib.request.Request(f"{sidecar.admin}/metrics", headers={"Accept": "text/plain"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        text = response.read().decode("utf-8", errors="replace")
    return parse_metrics(text, monotonic=time.monotonic(), wall=time.time())


def scrape_all(sidecars: Sequence[Sidecar]) -> list[Scrape | str]:
    """One read of every sidecar at once: a Scrape, or the reason it failed."""

    def one(sidecar: Sidecar) -> Scrape | str:
        try:
            return scrape(sidecar)
        except urllib.error.HTTPError as exc:
            exc.close()
            return f"HTTP {exc.code} from {sidecar.admin}/metrics"
        except (OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            return f"{sidecar.admin}: {reason}"

    with ThreadPoolExecutor(max_workers=min(16, max(1, len(sidecars)))) as pool:
        return list(pool.map(one, sidecars))


def collect(sidecars: Sequence[Sidecar], window: float, previous: _Previous | None = None) -> list[StatRow]:
    """Reads every sidecar (twice, `window` apart, unless `previous` holds the last reads) into rows."""
    before: list[Scrape | str | None]
    if previous is not None and previous.scrapes:
        before = [previous.scrapes.get(s.admin) for s in sidecars]
    elif window > 0:
        before = list(scrape_all(sidecars))
        time.sleep(window)
    else:
        before = [None] * len(sidecars)
    after = scrape_all(sidecars)
    rows = []
    for sidecar, first, second in zip(sidecars, before, after, strict=True):
        if isinstance(second, str) or isinstance(first, str):
            error = second if isinstance(second, str) else str(first)
            rows.append(
                StatRow(sidecar.admin, sidecar.agent or "-", sidecar.version or "-", "unreachable", error=error)
            )
            continue
        row = figures(first, second)
        row.admin = sidecar.admin
        row.agent = row.agent or sidecar.agent or "-"
        row.version = row.version or sidecar.version or "-"
        rows.append(row)
        if previous is not None:
            previous.scrapes[sidecar.admin] = second
    return rows


# Written by a running `agentmesh up` (agentmesh/local/status.py): every replica's admin address.
RUNNING_MESH_STATUS = Path(".agentmesh/status.json")


def sidecars_from(admins: Iterable[str], mesh_path: Path | None) -> list[Sidecar]:
    """The sidecars named by --admin URLs and by the agents of a mesh file; raises ConfigError."""
    found = [Sidecar(_admin_url(a)) for a in admins]
    if mesh_path is not None and mesh_path.suffix == ".json":
        from agentmesh.local.status import sidecars_in

        try:
            found += sidecars_in(mesh_path)
        except (OSError, ValueError) as exc:
            raise ConfigError([ConfigIssue(str(mesh_path), None, "", f"unreadable status file: {exc}")]) from exc
    elif mesh_path is not None:
        from agentmesh.local.meshfile import MeshFile
        from sidecar.config.bootstrap import Bootstrap

        mesh = MeshFile.load(mesh_path)
        for agent in mesh.agents:
            bootstrap = Bootstrap.load(agent.sidecar)
            found.append(Sidecar(_admin_url(bootstrap.listen.admin), bootstrap.agent.name, bootstrap.agent.version))
    return found


def _admin_url(address: str) -> str:
    url = address if "://" in address else f"http://{address}"
    url = url.rstrip("/")
    # A sidecar listening on every interface is reached on loopback.
    return url.replace("://0.0.0.0:", "://127.0.0.1:").replace("://[::]:", "://[::1]:")


# --- rendering ---------------------------------------------------------------------------------------------------

_COLUMNS = ("AGENT", "VERSION", "STATUS", "REQUESTS", "SUCCESS", "RPS", "P50", "P95", "P99", "IN-FLIGHT", "UPSTREAM")


def render_table(rows: Sequence[StatRow]) -> str:
    """The rows as an aligned text table."""
    cells = [
        (
            row.agent,
            row.version,
            row.status,
            format_number(row.requests, 0),
            "-" if row.success_rate is None else f"{row.success_rate * 100:.2f}%",
            format_number(row.rps, 2),
            *(format_latency(v) for v in (row.p50, row.p95, row.p99)),
            format_number(row.in_flight, 0),
            "-" if row.upstream_healthy is None else ("healthy" if row.upstream_healthy else "UNHEALTHY"),
        )
        for row in rows
    ]
    widths = [max(len(str(r[i])) for r in (_COLUMNS, *cells)) for i in range(len(_COLUMNS))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() for line in (_COLUMNS, *cells)
    ]
    errors = [f"{row.agent}: {row.error}" for row in rows if row.error]
    return "\n".join(lines + (["", *errors] if errors else []))


def render(rows: Sequence[StatRow], output: str, window: float) -> str:
    if output == "table":
        return render_table(rows)
    data = {"window_seconds": window, "rows": [asdict(row) for row in rows]}
    if output == "json":
        return json.dumps(data, indent=2)
    return yaml.safe_dump(data, sort_keys=False).rstrip("\n")


def format_number(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_latency(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms" if seconds >= 0.01 else f"{seconds * 1000:.1f}ms"
    return f"{seconds:.2f}s"


# --- commands ----------------------------------------------------------------------------------------------------


def _window(_ctx: click.Context, _param: click.Parameter, value: str) -> float:
    try:
        return parse_duration(0 if value.strip() == "0" else value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


_admin_option = click.option(
    "--admin",
    "admins",
    multiple=True,
    metavar="URL",
    help="A sidecar's admin endpoint, e.g. http://127.0.0.1:15000; repeatable.",
)
_file_option = click.option(
    "-f",
    "--file",
    "mesh_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="A mesh file (the sidecar of each of its agents) or the status file of a running "
    "`agentmesh up` (every replica); default: .agentmesh/status.json when it exists.",
)
_output_option = click.option(
    "-o", "--output", type=click.Choice(["table", "json", "yaml"]), default="table", show_default=True
)


@click.command("stat")
@_admin_option
@_file_option
@_output_option
@click.option(
    "--window",
    metavar="DURATION",
    default=DEFAULT_WINDOW,
    show_default=True,
    callback=_window,
    help="Interval between the two reads; 0: totals since each sidecar started counting.",
)
@click.option("--watch", is_flag=True, help="Print the figures again every window until Ctrl-C.")
def stat(admins: tuple[str, ...], mesh_path: Path | None, output: str, window: float, watch: bool) -> None:
    """Success rate, requests/s, latency percentiles and calls in flight of each sidecar.

    Reads the sidecars' admin /metrics directly (no Prometheus). Latency
    percentiles come from the duration histogram's buckets, so they are
    estimates within a bucket.

    Exit codes: 0 every sidecar answered, 1 a sidecar was unreachable, 2 usage
    or mesh file error.
    """
    sidecars = _sidecars(admins, mesh_path)
    if watch:
        _watch(sidecars, output, window or parse_duration(DEFAULT_WINDOW), clear=False)
        return
    rows = collect(sidecars, window)
    click.echo(render(rows, output, window))
    if any(row.status == "unreachable" for row in rows):
        sys.exit(EXIT_UNREACHABLE)


@click.command("top")
@_admin_option
@_file_option
@click.option(
    "--interval",
    metavar="DURATION",
    default=DEFAULT_WINDOW,
    show_default=True,
    callback=_window,
    help="Refresh interval.",
)
def top(admins: tuple[str, ...], mesh_path: Path | None, interval: float) -> None:
    """`agentmesh stat` on a screen refreshed every interval, until Ctrl-C."""
    _watch(_sidecars(admins, mesh_path), "table", interval or parse_duration(DEFAULT_WINDOW), clear=True)


def _sidecars(admins: tuple[str, ...], mesh_path: Path | None) -> list[Sidecar]:
    if not admins and mesh_path is None:
        if not RUNNING_MESH_STATUS.is_file():
            raise click.UsageError("name the sidecars: --admin URL (repeatable) or -f mesh.yaml")
        mesh_path = RUNNING_MESH_STATUS
    try:
        return sidecars_from(admins, mesh_path)
    except ConfigError as exc:
        raise click.UsageError(f"invalid mesh:\n{exc}") from exc


def _watch(sidecars: Sequence[Sidecar], output: str, interval: float, *, clear: bool) -> None:
    previous = _Previous()
    try:
        collect(sidecars, 0, previous)
        while True:
            time.sleep(interval)
            text = render(collect(sidecars, interval, previous), output, interval)
            if clear and sys.stdout.isatty():
                click.clear()
            stamp = time.strftime("%H:%M:%S")
            if output == "table":
                click.echo(f"{stamp}  every {interval:g}s, Ctrl-C to stop\n{text}\n")
            else:
                click.echo(text if output == "yaml" else json.dumps(json.loads(text)))
                if output == "yaml":
                    click.echo("---")
    except KeyboardInterrupt:
        return
