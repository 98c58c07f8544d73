"""mesh.yaml: replicas, placeholders, policies, the control plane and autoscale keys, with file:line errors."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from agentmesh.config import ConfigError
from agentmesh.local.meshfile import MeshFile, substitute

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "examples" / "mesh.yaml"


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "agent.yaml").write_text("agent: {name: a}\n")
    (tmp_path / "policies").mkdir(exist_ok=True)
    path = tmp_path / "mesh.yaml"
    path.write_text(text)
    return path


def issues(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        MeshFile.load(path)
    return [str(issue) for issue in caught.value.issues]


def test_the_example_mesh_runs_replicas_with_a_port_each_and_applies_the_canary() -> None:
    mesh = MeshFile.load(EXAMPLE)
    entries = {entry.name: entry for entry in mesh.agents}
    assert set(entries) == {"researcher", "researcher-v2", "writer", "summarizer", "planner"}
    assert (entries["researcher"].replicas.min, entries["researcher"].replicas.max) == (1, 3)
    assert all("{port}" in entry.command for entry in mesh.agents)
    assert entries["planner"].env == {"AGENTMESH_EGRESS_HTTP": "{egress_http}"}
    assert [p.name for p in mesh.policies] == ["researcher-traffic.yaml", "researcher-config.yaml"]
    assert (mesh.control_plane.listen, mesh.control_plane.http) == ("127.0.0.1:15010", "127.0.0.1:18080")


def test_defaults_keep_a_plain_mesh_file_working(tmp_path: Path) -> None:
    mesh = MeshFile.load(write(tmp_path, "agents:\n  - {name: a, command: [run], sidecar: agent.yaml}\n"))
    [entry] = mesh.agents
    assert (entry.replicas.min, entry.replicas.max) == (1, 1)
    assert mesh.policies == ()
    assert (mesh.autoscale.target_in_flight, mesh.autoscale.interval) == (2.0, 2.0)
    assert (mesh.autoscale.scale_up_checks, mesh.autoscale.scale_down_checks) == (2, 5)


def test_placeholders_are_replaced_in_command_and_environment(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "agents:\n"
        "  - name: a\n"
        "    command: ['{python}', agent.py, --port, '{port}', --json, '{\"k\": 1}']\n"
        "    sidecar: agent.yaml\n"
        "    env: {EGRESS: '{egress_http}', GRPC: '{egress_grpc}', INDEX: 'r{replica}'}\n",
    )
    [entry] = MeshFile.load(path).agents
    values = {"port": "9001", "egress_http": "http://127.0.0.1:9002", "egress_grpc": "127.0.0.1:9003", "replica": "2"}
    assert entry.argv(values) == [sys.executable, "agent.py", "--port", "9001", "--json", '{"k": 1}']
    assert entry.environment(values) == {"EGRESS": "http://127.0.0.1:9002", "GRPC": "127.0.0.1:9003", "INDEX": "r2"}
    assert substitute("{port}/{other}", {"port": "1"}) == "1/{other}"


def test_policies_and_sidecars_are_relative_to_the_mesh_file(tmp_path: Path) -> None:
    (tmp_path / "policies" / "p.yaml").parent.mkdir()
    (tmp_path / "policies" / "p.yaml").write_text("")
    path = write(
        tmp_path, "policies: [policies/, policies/p.yaml]\nagents:\n  - {name: a, command: [x], sidecar: agent.yaml}\n"
    )
    mesh = MeshFile.load(path)
    assert mesh.policies == (tmp_path / "policies", tmp_path / "policies" / "p.yaml")
    assert mesh.agents[0].sidecar == tmp_path / "agent.yaml"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "agents:\n  - name: a\n    command: [x]\n    sidecar: agent.yaml\n    replicas: {min: 3, max: 2}\n",
            ":5: agents[0].replicas: min (3) must not exceed max (2)",
        ),
        (
            "agents:\n  - name: a\n    command: [x, --port, '8080']\n    sidecar: agent.yaml\n    replicas: {max: 2}\n",
            ":5: agents[0].replicas: max 2 needs '{port}' in the command",
        ),
        (
            "agents:\n  - name: a\n    command: [x, '{prot}']\n    sidecar: agent.yaml\n",
            ":3: agents[0].command: unknown placeholder {prot}: use one of {python}, {port},",
        ),
        (
            "agents:\n  - name: a\n    command: [x]\n    sidecar: agent.yaml\n    env: {E: '{egress}'}\n",
            ":5: agents[0].env: unknown placeholder {egress}",
        ),
        (
            "agents:\n  - name: a\n    command: [x]\n    sidecar: agent.yaml\n    replica: {max: 2}\n",
            ":5: agents[0].replica: unknown key",
        ),
        (
            "agents:\n  - name: A_1\n    command: [x]\n    sidecar: agent.yaml\n",
            ":2: agents[0].name: 'A_1' is not a valid entry name",
        ),
        (
            "policies: [missing/]\nagents:\n  - {name: a, command: [x], sidecar: agent.yaml}\n",
            ":1: policies: not found: ",
        ),
        (
            "autoscale:\n  target_in_flight: 0\nagents:\n  - {name: a, command: [x], sidecar: agent.yaml}\n",
            ":2: autoscale.target_in_flight: Input should be greater than 0",
        ),
        (
            "autoscale: {interval: soon}\nagents:\n  - {name: a, command: [x], sidecar: agent.yaml}\n",
            ":1: autoscale.interval: invalid duration 'soon'",
        ),
        (
            "control_plane:\n  listen: nowhere\nagents:\n  - {name: a, command: [x], sidecar: agent.yaml}\n",
            ":2: control_plane.listen: invalid address 'nowhere'",
        ),
        (
            "agents:\n  - {name: a, command: [x], sidecar: agent.yaml}\n"
            "  - {name: a, command: [y], sidecar: agent.yaml}\n",
            ":1: agents: duplicate agent names: a",
        ),
    ],
    ids=[
        "min-above-max",
        "replicas-without-port",
        "unknown-placeholder",
        "unknown-env-placeholder",
        "unknown-key",
        "bad-name",
        "missing-policies",
        "zero-target",
        "bad-interval",
        "bad-control-plane",
        "duplicate-names",
    ],
)
def test_malformed_mesh_files_name_file_line_and_field(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    found = issues(path)
    assert any(issue.startswith(f"{path}{expected}") for issue in found), found
