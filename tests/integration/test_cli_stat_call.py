"""`agentmesh stat`, `top` and `call` against real example agents and sidecars.

The figures `stat` computes from a sidecar's /metrics (counters, histogram
percentiles) are first checked on hand-written expositions, then end to end.
"""

from __future__ import annotations

import json
import math
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from google.protobuf import struct_pb2

from agentmesh.cli.stat import figures, histogram_quantile, parse_metrics
from agentmesh.v1 import agent_pb2, agent_pb2_grpc
from tests.integration.mesh import AgentUnderTest, agent_with_sidecar
from tests.integration.procs import AGENTMESH, ROOT, free_port, start, wait_for

SEARCH = "research.v1.Researcher/Search"


def agentmesh(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*AGENTMESH, *args], capture_output=True, text=True, input=stdin, timeout=60, cwd=ROOT, check=False
    )


def invoke(address: str, skill: str, payload: dict[str, Any]) -> grpc.StatusCode:
    """One Agent/Invoke call; the status code it ended with."""
    request = agent_pb2.InvokeRequest(skill=skill, json=struct_pb2.Struct())
    request.json.update(payload)
    with grpc.insecure_channel(address) as channel:
        try:
            agent_pb2_grpc.AgentStub(channel).Invoke(request, timeout=10)
        except grpc.RpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


def mesh_file(tmp: Path, *agents: AgentUnderTest) -> Path:
    path = tmp / "mesh.yaml"
    entries = [{"name": a.name, "command": ["true"], "sidecar": str(a.config)} for a in agents]
    path.write_text(yaml.safe_dump({"agents": entries}))
    return path


def stat_rows(*args: str) -> tuple[int, list[dict[str, Any]]]:
    result = agentmesh("stat", *args, "-o", "json")
    assert result.stdout, result.stderr
    return result.returncode, json.loads(result.stdout)["rows"]


# --- figures from expositions (no process) ----------------------------------------------------------------------

_EXPOSITION = """\
# TYPE agentmesh_requests_total counter
agentmesh_requests_total{direction="inbound",source_agent="a",{route},grpc_code="OK"} {ok}
agentmesh_requests_total{direction="inbound",source_agent="b",{route},grpc_code="UNAVAILABLE"} {failed}
agentmesh_requests_total{direction="outbound",source_agent="researcher",{out_route},grpc_code="OK"} 50
# TYPE agentmesh_requests_created gauge
agentmesh_requests_created{direction="inbound",source_agent="a",{route},grpc_code="OK"} 1000
# TYPE agentmesh_request_duration_seconds histogram
agentmesh_request_duration_seconds_bucket{direction="inbound",grpc_code="OK",le="0.1"} {b1}
agentmesh_request_duration_seconds_bucket{direction="inbound",grpc_code="OK",le="1.0"} {b2}
agentmesh_request_duration_seconds_bucket{direction="inbound",grpc_code="OK",le="+Inf"} {b3}
agentmesh_request_duration_seconds_bucket{direction="outbound",grpc_code="OK",le="0.1"} 50
agentmesh_request_duration_seconds_bucket{direction="outbound",grpc_code="OK",le="1.0"} 50
agentmesh_request_duration_seconds_bucket{direction="outbound",grpc_code="OK",le="+Inf"} 50
# TYPE agentmesh_requests_in_flight gauge
agentmesh_requests_in_flight{direction="inbound",destination_agent="researcher"} 3
agentmesh_requests_in_flight{direction="outbound",destination_agent="writer"} 7
# TYPE agentmesh_upstream_healthy gauge
agentmesh_upstream_healthy{agent="researcher",version="v2"} {healthy}
"""


def exposition(ok: int, failed: int, b1: int, b2: int, b3: int, healthy: int = 1) -> str:
    values = {
        "route": 'destination_agent="researcher",destination_version="v2",rpc_method="/r.R/S"',
        "out_route": 'destination_agent="writer",destination_version="v1",rpc_method="/w.W/D"',
        **{"ok": ok, "failed": failed, "b1": b1, "b2": b2, "b3": b3, "healthy": healthy},
    }
    text = _EXPOSITION
    for key, value in values.items():
        text = text.replace("{" + key + "}", str(value))
    return text


def test_totals_since_creation_count_inbound_calls_only():
    scrape = parse_metrics(exposition(ok=8, failed=2, b1=4, b2=8, b3=8), monotonic=0.0, wall=1010.0)
    row = figures(None, scrape)
    assert (row.agent, row.version) == ("researcher", "v2")
    assert row.requests == 10
    assert row.success_rate == pytest.approx(0.8)
    assert row.rps == pytest.approx(1.0)  # 10 calls over the 10 s since the first series was created
    assert row.in_flight == 3
    assert row.upstream_healthy is True


def test_window_uses_the_difference_between_two_reads():
    before = parse_metrics(exposition(ok=8, failed=2, b1=4, b2=8, b3=8), monotonic=100.0, wall=0.0)
    after = parse_metrics(exposition(ok=12, failed=6, b1=4, b2=12, b3=12, healthy=0), monotonic=102.0, wall=0.0)
    row = figures(before, after)
    assert row.requests == 8
    assert row.success_rate == pytest.approx(0.5)
    assert row.rps == pytest.approx(4.0)
    # All 4 new observations fell in (0.1, 1.0]: the median is interpolated halfway.
    assert row.p50 == pytest.approx(0.55)
    assert row.upstream_healthy is False


def test_a_counter_reset_counts_from_zero():
    before = parse_metrics(exposition(ok=100, failed=0, b1=100, b2=100, b3=100), monotonic=0.0, wall=0.0)
    after = parse_metrics(exposition(ok=3, failed=1, b1=4, b2=4, b3=4), monotonic=1.0, wall=0.0)
    row = figures(before, after)
    assert row.requests == 4
    assert row.success_rate == pytest.approx(0.75)


def test_no_calls_means_no_rate_and_no_percentiles():
    row = figures(None, parse_metrics(exposition(ok=0, failed=0, b1=0, b2=0, b3=0), monotonic=0.0, wall=1000.0))
    assert row.requests == 0
    assert row.success_rate is None
    assert (row.p50, row.p95, row.p99) == (None, None, None)


@pytest.mark.parametrize(
    ("q", "buckets", "expected"),
    [
        (0.5, {0.1: 0.0, 0.2: 10.0, math.inf: 10.0}, 0.15),
        (0.99, {0.1: 10.0, math.inf: 10.0}, 0.099),
        (0.5, {0.1: 0.0, 1.0: 0.0, math.inf: 4.0}, 1.0),  # beyond the last finite bound: that bound
        (0.5, {0.1: 0.0, math.inf: 0.0}, None),
        (0.5, {}, None),
    ],
)
def test_histogram_quantile_interpolates_like_promql(q, buckets, expected):
    result = histogram_quantile(q, buckets)
    assert result == (None if expected is None else pytest.approx(expected))


# --- against a real researcher and writer ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def researcher(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentUnderTest]:
    with agent_with_sidecar(tmp_path_factory.mktemp("researcher"), "researcher") as under_test:
        yield under_test


@pytest.fixture(scope="module")
def writer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentUnderTest]:
    with agent_with_sidecar(tmp_path_factory.mktemp("writer"), "writer") as under_test:
        yield under_test


def test_stat_follows_calls_success_rate_and_health(tmp_path):
    with agent_with_sidecar(tmp_path, "researcher") as under_test:
        admin, inbound = under_test.ports.admin_url, under_test.ports.inbound_address

        code, rows = stat_rows("--admin", admin, "--window", "0")
        assert code == 0
        assert rows[0] | {"rps": None} == {
            "admin": admin,
            "agent": "researcher",
            "version": "v1",
            "status": "ok",
            "requests": 0,
            "success_rate": None,
            "rps": None,
            "p50": None,
            "p95": None,
            "p99": None,
            "in_flight": 0,
            "upstream_healthy": True,
            "error": "",
        }

        for query in ("tidal energy", "wind power", "solar cells"):
            assert invoke(inbound, SEARCH, {"query": query, "max_results": 2}) == grpc.StatusCode.OK
        code, rows = stat_rows("--admin", admin, "--window", "0")
        assert code == 0
        assert rows[0]["requests"] == 3
        assert rows[0]["success_rate"] == 1.0
        assert rows[0]["rps"] > 0
        assert 0 < rows[0]["p50"] <= rows[0]["p95"] <= rows[0]["p99"]

        assert invoke(inbound, SEARCH, {"query": "ab", "max_results": 2}) == grpc.StatusCode.INVALID_ARGUMENT
        table = agentmesh("stat", "--admin", admin, "--window", "0")
        assert table.returncode == 0, table.stderr
        header, line = table.stdout.splitlines()[:2]
        assert header.split() == [
            "AGENT", "VERSION", "STATUS", "REQUESTS", "SUCCESS", "RPS", "P50", "P95", "P99", "IN-FLIGHT", "UPSTREAM"
        ]  # fmt: skip
        cells = line.split()
        assert cells[:5] == ["researcher", "v1", "ok", "4", "75.00%"]
        assert cells[-1] == "healthy"

        # A window with no calls in it: nothing counted, whatever came before.
        code, rows = stat_rows("--admin", admin, "--window", "200ms")
        assert code == 0
        assert rows[0]["requests"] == 0
        assert rows[0]["rps"] == 0
        assert rows[0]["success_rate"] is None

        # The agent stops: the sidecar still answers, and says the agent is unhealthy.
        assert under_test.agent is not None
        under_test.agent.stop()
        wait_for(
            lambda: stat_rows("--admin", admin, "--window", "0")[1][0]["upstream_healthy"] is False, what="unhealthy"
        )
        table = agentmesh("stat", "--admin", admin, "--window", "0")
        assert "UNHEALTHY" in table.stdout


def test_stat_reports_unreachable_sidecars_with_exit_code_1(researcher):
    dead = f"http://127.0.0.1:{free_port()}"
    code, rows = stat_rows("--admin", researcher.ports.admin_url, "--admin", dead, "--window", "0")
    assert code == 1
    assert [r["status"] for r in rows] == ["ok", "unreachable"]
    assert rows[1]["admin"] == dead
    assert "refused" in rows[1]["error"].lower()
    table = agentmesh("stat", "--admin", dead, "--window", "0")
    assert table.returncode == 1
    assert "unreachable" in table.stdout


def test_stat_finds_sidecars_in_a_mesh_file(tmp_path, researcher, writer):
    mesh = mesh_file(tmp_path, researcher, writer)
    code, rows = stat_rows("-f", str(mesh), "--window", "0")
    assert code == 0
    assert [(r["agent"], r["admin"]) for r in rows] == [
        ("researcher", researcher.ports.admin_url),
        ("writer", writer.ports.admin_url),
    ]
    result = agentmesh("stat", "-o", "yaml", "-f", str(mesh), "--window", "0")
    assert [r["agent"] for r in yaml.safe_load(result.stdout)["rows"]] == ["researcher", "writer"]


def test_stat_usage_errors_exit_2(tmp_path):
    assert agentmesh("stat").returncode == 2
    assert agentmesh("stat", "--admin", "http://127.0.0.1:1", "--window", "soon").returncode == 2
    bad = tmp_path / "mesh.yaml"
    bad.write_text("agents: []\n")
    result = agentmesh("stat", "-f", str(bad))
    assert result.returncode == 2
    assert "mesh.yaml" in result.stderr


def test_top_refreshes_until_interrupted(tmp_path, researcher):
    process = start("top", [*AGENTMESH, "top", "--admin", researcher.ports.admin_url, "--interval", "100ms"], tmp_path)
    try:
        wait_for(lambda: process.output().count("AGENT") >= 2, what="two refreshes of top", process=process)
    finally:
        code = process.stop(signal.SIGINT)
    assert code == 0
    assert "researcher" in process.output()
    assert "Traceback" not in process.output()


def test_call_prints_the_answer(researcher):
    result = agentmesh(
        "call", "researcher", SEARCH, "--json", '{"query": "tidal energy", "max_results": 2}',
        "--address", researcher.ports.inbound_address,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert len(answer["findings"]) == 2
    assert answer["model"] == "research-sim-1"


def test_call_finds_the_address_in_a_mesh_file_and_prints_yaml(tmp_path, researcher):
    mesh = mesh_file(tmp_path, researcher)
    result = agentmesh(
        "call", "researcher", "Search", "--json", '{"query": "tidal energy", "max_results": 1}',
        "-f", str(mesh), "-o", "yaml",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert len(yaml.safe_load(result.stdout)["findings"]) == 1


def test_call_reads_the_request_from_a_file_or_stdin(tmp_path, researcher):
    request = tmp_path / "request.json"
    request.write_text('{"query": "tidal energy", "max_results": 3}')
    address = researcher.ports.inbound_address
    from_file = agentmesh("call", "researcher", SEARCH, "--json", f"@{request}", "--address", address)
    from_stdin = agentmesh("call", "researcher", SEARCH, "--json", "-", "--address", address, stdin=request.read_text())
    assert from_file.returncode == from_stdin.returncode == 0, from_file.stderr + from_stdin.stderr
    assert json.loads(from_file.stdout) == json.loads(from_stdin.stdout)
    assert len(json.loads(from_file.stdout)["findings"]) == 3


def test_call_shows_field_violations_one_per_line(researcher):
    result = agentmesh(
        "call", "researcher", SEARCH, "--json", '{"query": "ab", "max_results": 20}',
        "--address", researcher.ports.inbound_address,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines[0] == f"error: {SEARCH} on researcher failed"
    assert lines[1].startswith("INVALID_ARGUMENT (RULE_VIOLATION): ")
    assert "  query: must be at least 3 characters" in lines
    assert any(line.startswith("  max_results: ") for line in lines)


def test_call_reports_an_agent_error(researcher):
    result = agentmesh(
        "call", "researcher", SEARCH, "--json", '{"query": "__error__", "max_results": 1}',
        "--address", researcher.ports.inbound_address,
    )  # fmt: skip
    assert result.returncode == 1
    assert "UNAVAILABLE" in result.stderr


def test_call_streams_one_json_per_message(writer):
    result = agentmesh(
        "call", "writer", "writing.v1.Writer/StreamDraft", "--json", '{"topic": "tides", "facts": ["a", "b"]}',
        "--address", writer.ports.inbound_address,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    messages = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(messages) == 3
    assert "".join(m["text"] for m in messages).startswith("This draft looks at tides.")
    assert messages[-1]["usage"]["output_tokens"]


def test_call_reports_an_error_in_the_middle_of_a_stream(writer):
    result = agentmesh(
        "call", "writer", "StreamDraft", "--json", '{"topic": "__stream_error__", "facts": ["a", "b", "c"]}',
        "--address", writer.ports.inbound_address,
    )  # fmt: skip
    assert result.returncode == 1
    assert len(result.stdout.splitlines()) == 2  # the chunks before the error
    assert result.stderr.startswith("error: writing.v1.Writer/StreamDraft on writer failed\n")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["researcher", "research.v1.Researcher/Find"], "has no skill"),
        (["writer", SEARCH], "fronts agent 'researcher', not 'writer'"),
        (["researcher", SEARCH, "--json", "{not json"], "not JSON"),
        (["researcher", SEARCH, "--json", "[1, 2]"], "expected a JSON object"),
        (["researcher", SEARCH, "--timeout", "soon"], "invalid duration"),
    ],
)
def test_call_usage_errors_exit_2(researcher, args, message):
    result = agentmesh("call", *args, "--address", researcher.ports.inbound_address)
    assert result.returncode == 2
    assert message in result.stderr


def test_call_usage_errors_with_a_mesh_file(tmp_path, researcher):
    mesh = mesh_file(tmp_path, researcher)
    unknown = agentmesh("call", "planner", "Plan", "-f", str(mesh))
    assert unknown.returncode == 2
    assert "no agent 'planner'" in unknown.stderr
    both = agentmesh("call", "researcher", "Search", "-f", str(mesh), "--address", "127.0.0.1:1")
    assert both.returncode == 2


def test_call_to_nothing_is_an_rpc_error(tmp_path):
    result = agentmesh("call", "researcher", "Search", "--address", f"127.0.0.1:{free_port()}", "--timeout", "2s")
    assert result.returncode == 1
    assert "UNAVAILABLE" in result.stderr
