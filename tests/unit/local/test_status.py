"""status.json: written whole, read back, and turned into the sidecars `agentmesh stat` reads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agentmesh.cli.stat import Sidecar
from agentmesh.local.status import AgentStatus, MeshStatus, ReplicaStatus, read_status, sidecars, sidecars_in


def replica(index: int, admin: str) -> ReplicaStatus:
    return ReplicaStatus(
        index=index,
        state="ready",
        agent_pid=100 + index,
        sidecar_pid=200 + index,
        agent_restarts=0,
        sidecar_restarts=0,
        agent_port=8200 + index,
        inbound=f"127.0.0.1:{1500 + index}",
        egress_grpc="127.0.0.1:1",
        egress_http="http://127.0.0.1:2",
        admin=admin,
        config=f"/x/researcher-{index}.yaml",
    )


def status() -> MeshStatus:
    researcher = AgentStatus(
        name="researcher",
        agent="researcher",
        version="v1",
        desired=2,
        ready=2,
        health="healthy",
        restarts=1,
        scale_ups=1,
        scale_downs=0,
        rps=2.5,
        error_rate=0.0,
        p99=0.02,
        in_flight=1.0,
        replicas=(replica(0, "http://127.0.0.1:15200"), replica(1, "http://127.0.0.1:40001")),
        draining=(replica(2, "http://127.0.0.1:40002"),),
    )
    return MeshStatus(
        pid=42,
        mesh_file="/x/mesh.yaml",
        control_plane={"grpc": "127.0.0.1:15010", "http": "http://127.0.0.1:18080"},
        policy_version=3,
        prometheus=None,
        prometheus_pid=None,
        agents=(researcher,),
    )


def test_written_status_reads_back_as_json(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    status().write(path)
    data = read_status(path)
    assert data["version"] == 1 and data["pid"] == 42 and data["policy_version"] == 3
    [agent] = data["agents"]
    assert [r["agent_pid"] for r in agent["replicas"]] == [100, 101]
    assert agent["draining"][0]["index"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["status.json"]  # no temporary file left


def test_stat_reads_every_live_replica_not_the_draining_ones(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    status().write(path)
    expected = [
        Sidecar("http://127.0.0.1:15200", "researcher", "v1"),
        Sidecar("http://127.0.0.1:40001", "researcher", "v1"),
    ]
    assert sidecars_in(path) == expected
    assert sidecars(json.loads(path.read_text())) == expected


def test_other_json_is_not_a_status_file(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    path.write_text('{"agents": []}')
    with pytest.raises(ValueError, match="not an agentmesh up status file"):
        read_status(path)
    with pytest.raises(OSError):
        read_status(tmp_path / "missing.json")
