"""The live table: an entry's replicas summed with `agentmesh stat`'s figures, rendering, change lines."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from agentmesh.cli.stat import Scrape, parse_metrics
from agentmesh.local.meshfile import MeshAgent
from agentmesh.local.replicas import AgentReplicas, Replica, ReplicaPorts
from agentmesh.local.supervisor import Supervised, Supervisor
from agentmesh.local.table import (
    COLUMNS,
    AgentFigures,
    change_line,
    health,
    merge,
    render_addresses,
    render_table,
    summarize,
)
from sidecar.config.bootstrap import Bootstrap

ROOT = Path(__file__).resolve().parents[3]
AGENT_YAML = ROOT / "examples" / "agents" / "researcher" / "agent.yaml"


def exposition(ok: int, failed: int, fast: int, in_flight: int, healthy: int = 1) -> str:
    """`ok + failed` inbound calls, `fast` of them under 100 ms and the rest under 1 s."""
    total = ok + failed
    route = 'direction="inbound",destination_agent="researcher",destination_version="v1",rpc_method="/r.R/S"'
    return f"""\
# TYPE agentmesh_requests_total counter
agentmesh_requests_total{{{route},grpc_code="OK"}} {ok}
agentmesh_requests_total{{{route},grpc_code="UNAVAILABLE"}} {failed}
# TYPE agentmesh_request_duration_seconds histogram
agentmesh_request_duration_seconds_bucket{{{route},grpc_code="OK",le="0.1"}} {fast}
agentmesh_request_duration_seconds_bucket{{{route},grpc_code="OK",le="1.0"}} {total}
agentmesh_request_duration_seconds_bucket{{{route},grpc_code="OK",le="+Inf"}} {total}
# TYPE agentmesh_requests_in_flight gauge
agentmesh_requests_in_flight{{direction="inbound",destination_agent="researcher"}} {in_flight}
agentmesh_requests_in_flight{{direction="outbound",destination_agent="writer"}} 9
# TYPE agentmesh_upstream_healthy gauge
agentmesh_upstream_healthy{{agent="researcher",version="v1"}} {healthy}
"""


def scrape(at: float, **counts: int) -> Scrape:
    return parse_metrics(exposition(**counts), monotonic=at, wall=1000.0 + at)


def group_of(*replicas: Replica) -> AgentReplicas:
    entry = MeshAgent.model_validate({"name": "researcher", "command": ["x"], "sidecar": str(AGENT_YAML)})
    group = AgentReplicas(
        entry=entry,
        bootstrap=Bootstrap.load(AGENT_YAML),
        supervisor=Supervisor(),
        base_dir=ROOT,
        replicas_dir=ROOT,
        log_dir=ROOT,
        control_plane="127.0.0.1:1",
        on_event=lambda name, message: None,
    )
    group.live.extend(replicas)
    return group


def replica(index: int, *, window: Scrape | None, latest: Scrape | None, state: str = "ready") -> Replica:
    ports = ReplicaPorts(8200 + index, f"127.0.0.1:{1000 + index}", "127.0.0.1:2000", "0.0.0.0:3000", "127.0.0.1:4000")
    made = Replica(
        "researcher",
        index,
        ports,
        Path("x.yaml"),
        Supervised("a", ["x"], ROOT),
        Supervised("s", ["x"], ROOT),
        created_at=0.0,
        window=window,
        scrape=latest,
    )
    made.state = state  # type: ignore[assignment]
    return made


def test_merge_sums_calls_buckets_and_in_flight() -> None:
    merged = merge([scrape(1.0, ok=4, failed=0, fast=4, in_flight=2), scrape(2.0, ok=1, failed=1, fast=0, in_flight=3)])
    assert merged.calls == {"OK": 5.0, "UNAVAILABLE": 1.0}
    assert merged.buckets == {0.1: 4.0, 1.0: 6.0, math.inf: 6.0}
    assert merged.in_flight == 5.0
    assert merged.monotonic == 2.0
    assert merged.healthy is True


def test_an_entry_row_sums_its_replicas_over_the_window() -> None:
    one = replica(
        0,
        window=scrape(0.0, ok=10, failed=0, fast=10, in_flight=0),
        latest=scrape(2.0, ok=18, failed=0, fast=18, in_flight=1),
    )
    two = replica(
        1,
        window=scrape(0.0, ok=0, failed=0, fast=0, in_flight=0),
        latest=scrape(2.0, ok=6, failed=2, fast=0, in_flight=2),
    )
    row = summarize(group_of(one, two))
    assert (row.name, row.version, row.ready, row.desired, row.health) == ("researcher", "v1", 2, 2, "healthy")
    assert row.rps == pytest.approx(8.0)  # 16 calls in 2 s
    assert row.error_rate == pytest.approx(2 / 16)
    # 8 of the 16 calls took under 100 ms: the 99th percentile is in the (0.1, 1] bucket.
    assert row.p99 == pytest.approx(0.1 + 0.9 * (15.84 - 8) / 8)
    assert row.in_flight == 3.0


def test_a_restarted_sidecar_starts_its_window_again() -> None:
    restarted = replica(
        0,
        window=scrape(0.0, ok=100, failed=0, fast=100, in_flight=0),
        latest=scrape(2.0, ok=2, failed=0, fast=2, in_flight=0),
    )
    steady = replica(
        1,
        window=scrape(0.0, ok=0, failed=0, fast=0, in_flight=0),
        latest=scrape(2.0, ok=4, failed=0, fast=4, in_flight=0),
    )
    row = summarize(group_of(restarted, steady))
    assert row.rps == pytest.approx(2.0)


def test_no_window_yet_means_no_rates() -> None:
    row = summarize(group_of(replica(0, window=None, latest=scrape(1.0, ok=1, failed=0, fast=1, in_flight=0))))
    assert (row.rps, row.error_rate, row.p99) == (None, None, None)
    assert row.in_flight == 0.0


@pytest.mark.parametrize(
    ("states", "desired", "expected"),
    [
        (["ready", "ready"], 2, "healthy"),
        (["ready", "starting"], 2, "starting"),
        (["starting"], 1, "starting"),
        (["ready", "unready"], 2, "degraded"),
        (["unready"], 1, "unhealthy"),
        ([], 0, "unhealthy"),
    ],
)
def test_health_of_an_entry(states: list[str], desired: int, expected: str) -> None:
    replicas = [replica(i, window=None, latest=None, state=s) for i, s in enumerate(states)]
    assert health(replicas, desired) == expected


def test_table_shows_replicas_health_rates_and_restarts() -> None:
    rows = [
        AgentFigures("researcher", "v1", 2, 3, "degraded", 4, rps=12.345, error_rate=0.25, p99=0.25, in_flight=7),
        AgentFigures("writer", "v1", 1, 1, "healthy", 0),
    ]
    lines = render_table(rows).splitlines()
    assert tuple(lines[0].split()) == COLUMNS
    assert COLUMNS[2:4] == ("REPLICAS", "HEALTH") and COLUMNS[-1] == "RESTARTS"
    assert lines[1].split() == ["researcher", "v1", "2/3", "degraded", "12.35", "25.0%", "250ms", "7", "4"]
    assert lines[2].split() == ["writer", "v1", "1/1", "healthy", "-", "-", "-", "-", "0"]


def test_addresses_list_every_live_replica() -> None:
    text = render_addresses([group_of(replica(1, window=None, latest=None), replica(0, window=None, latest=None))])
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["AGENT", "REPLICA", "INBOUND"]
    assert lines[1].split() == [
        "researcher",
        "0",
        "127.0.0.1:1000",
        "http://127.0.0.1:3000",  # a wildcard listener is reached on loopback
        "127.0.0.1:2000",
        "http://127.0.0.1:4000",
        "-/-",  # not running: no PIDs
    ]
    assert lines[2].split()[1] == "1"


def test_change_lines_report_replicas_health_and_restarts_not_rates() -> None:
    before = AgentFigures("researcher", "v1", 1, 1, "healthy", 0, rps=1.0)
    assert change_line(before, AgentFigures("researcher", "v1", 1, 1, "healthy", 0, rps=50.0), "12:00:00") is None
    line = change_line(before, AgentFigures("researcher", "v1", 1, 2, "starting", 0), "12:00:02")
    assert line == "12:00:02  researcher v1  replicas 1/2  starting  restarts 0"
    assert change_line(before, AgentFigures("researcher", "v1", 1, 1, "healthy", 1), "t") is not None
    assert change_line(None, before, "t") is not None
