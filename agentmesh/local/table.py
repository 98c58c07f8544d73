"""What `agentmesh up` shows: one row per mesh entry, the addresses to call, and change lines.

The figures come from each replica's sidecar admin `/metrics`, read and
computed by `agentmesh stat`'s own functions (`parse_metrics`, `figures`,
`histogram_quantile`): the replicas of an entry are summed into one read
before the window's rates and percentiles are taken, so p99 is the
entry's, not the worst replica's.

On a terminal the screen is redrawn every refresh; otherwise the table is
printed once and then one line per change of an entry's replicas, health or
restarts (`HH:MM:SS researcher replicas 2/2 healthy restarts 1`), so logs
and tests read a stable stream.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from agentmesh.cli.stat import Scrape, figures, format_latency, format_number
from agentmesh.local.replicas import AgentReplicas, Replica, reachable

COLUMNS = ("AGENT", "VERSION", "REPLICAS", "HEALTH", "RPS", "ERRORS", "P99", "IN-FLIGHT", "RESTARTS")
ADDRESS_COLUMNS = ("AGENT", "REPLICA", "INBOUND (gRPC)", "EGRESS (HTTP)", "EGRESS (gRPC)", "ADMIN", "PIDS")


@dataclass(frozen=True)
class AgentFigures:
    """One row: an entry's replicas and golden signals over the last window (None: no data yet)."""

    name: str
    version: str
    ready: int
    desired: int
    health: str
    restarts: int
    rps: float | None = None
    error_rate: float | None = None
    p99: float | None = None
    in_flight: float | None = None

    @property
    def state(self) -> tuple[int, int, str, int]:
        """What a change line reports: replicas, health and restarts (rates change all the time)."""
        return (self.ready, self.desired, self.health, self.restarts)


def merge(scrapes: Sequence[Scrape]) -> Scrape:
    """Several replicas' reads as one: calls, buckets and calls in flight summed."""
    calls: dict[str, float] = {}
    buckets: dict[float, float] = {}
    for scrape in scrapes:
        for code, value in scrape.calls.items():
            calls[code] = calls.get(code, 0.0) + value
        for bound, value in scrape.buckets.items():
            buckets[bound] = buckets.get(bound, 0.0) + value
    created = [s.first_created for s in scrapes if s.first_created is not None]
    healthy = [s.healthy for s in scrapes if s.healthy is not None]
    return Scrape(
        monotonic=max(s.monotonic for s in scrapes),
        wall=max(s.wall for s in scrapes),
        agent=scrapes[0].agent,
        version=scrapes[0].version,
        calls=calls,
        buckets=buckets,
        first_created=min(created) if created else None,
        in_flight=sum(s.in_flight for s in scrapes),
        healthy=all(healthy) if healthy else None,
    )


def health(replicas: Sequence[Replica], desired: int) -> str:
    """healthy (every replica ready), starting (the others still starting), degraded (some ready) or unhealthy."""
    states = [r.state for r in replicas]
    ready = states.count("ready")
    if desired and ready >= desired:
        return "healthy"
    if states and all(state in ("ready", "starting") for state in states):
        return "starting"
    return "degraded" if ready else "unhealthy"


def summarize(group: AgentReplicas) -> AgentFigures:
    """The row of one entry from its live replicas' window and latest reads."""
    pairs = [
        (r.window, r.scrape)
        for r in group.live
        if r.window is not None
        and r.scrape is not None
        and r.scrape is not r.window
        # A sidecar that restarted counts from zero: its window starts again.
        and sum(r.scrape.calls.values()) >= sum(r.window.calls.values())
    ]
    current = [r.scrape for r in group.live if r.scrape is not None and not r.scrape_error]
    row = AgentFigures(
        name=group.name,
        version=group.bootstrap.agent.version,
        ready=group.ready,
        desired=group.desired,
        health=health(group.live, group.desired),
        restarts=group.restarts,
        in_flight=sum(s.in_flight for s in current) if current else None,
    )
    if not pairs:
        return row
    stat = figures(merge([before for before, _ in pairs]), merge([after for _, after in pairs]))
    error_rate = None if stat.success_rate is None else 1.0 - stat.success_rate
    return replace(row, rps=stat.rps, error_rate=error_rate, p99=stat.p99)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def _aligned(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(line[i]) for line in (header, *rows)) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in (header, *rows)
    )


def render_table(rows: Sequence[AgentFigures]) -> str:
    """The agents table."""
    return _aligned(
        COLUMNS,
        [
            (
                row.name,
                row.version,
                f"{row.ready}/{row.desired}",
                row.health,
                format_number(row.rps, 2),
                _percent(row.error_rate),
                format_latency(row.p99),
                format_number(row.in_flight, 0),
                str(row.restarts),
            )
            for row in rows
        ],
    )


def render_addresses(groups: Sequence[AgentReplicas]) -> str:
    """Where to reach every live replica: the sidecar's inbound, egress and admin addresses."""
    rows = []
    for group in groups:
        for replica in sorted(group.live, key=lambda r: r.index):
            pids = "/".join(str(p) if p else "-" for p in (replica.agent.pid, replica.sidecar.pid))
            rows.append(
                (
                    group.name,
                    str(replica.index),
                    replica.inbound,
                    f"http://{reachable(replica.ports.egress_http)}",
                    reachable(replica.ports.egress_grpc),
                    replica.admin_url,
                    pids,
                )
            )
    return _aligned(ADDRESS_COLUMNS, rows)


def change_line(before: AgentFigures | None, after: AgentFigures, stamp: str) -> str | None:
    """One line when an entry's replicas, health or restarts changed since `before`; None otherwise."""
    if before is not None and before.state == after.state:
        return None
    return (
        f"{stamp}  {after.name} {after.version}  replicas {after.ready}/{after.desired}  {after.health}"
        f"  restarts {after.restarts}"
    )
