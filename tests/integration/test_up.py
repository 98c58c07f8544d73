"""`agentmesh up` runs a real mesh: control plane, agents, sidecars, policies, Prometheus, replicas.

Each test runs `agentmesh up` in a working folder of its own (its
`.agentmesh/` with the database, token and status.json) on free ports, reads
`.agentmesh/status.json` for PIDs and addresses, talks to the embedded
control plane with the CLI and the token from `.agentmesh/token`, and stops
it with SIGTERM: every process it started must be gone. Waits are bounded;
nothing asserts a duration.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from google.protobuf import struct_pb2

from agentmesh.v1 import agent_pb2, agent_pb2_grpc
from tests.integration.mesh import EXAMPLES, Messages, SidecarPorts, unary, write_config
from tests.integration.procs import AGENTMESH, ROOT, Process, free_port, wait_for

POLICIES = ROOT / "examples" / "policies"
SEARCH = "research.v1.Researcher/Search"
TABLE_HEADER = ["AGENT", "VERSION", "REPLICAS", "HEALTH", "RPS", "ERRORS", "P99", "IN-FLIGHT", "RESTARTS"]
PROMETHEUS = shutil.which("prometheus")


@dataclass
class Up:
    """One `agentmesh up` process in its own working folder."""

    process: Process
    work: Path
    mesh_file: Path
    pids: set[int] = field(default_factory=set)

    @property
    def state(self) -> Path:
        return self.work / ".agentmesh"

    def status(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.state / "status.json").read_text())
        for agent in data["agents"]:
            for replica in [*agent["replicas"], *agent["draining"]]:
                self.pids |= {p for p in (replica["agent_pid"], replica["sidecar_pid"]) if p}
        if data.get("prometheus_pid"):
            self.pids.add(data["prometheus_pid"])
        return data

    def agent(self, name: str) -> dict[str, Any]:
        return next(a for a in self.status()["agents"] if a["name"] == name)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """The CLI against the embedded control plane, with the token `agentmesh up` wrote."""
        env = {
            **os.environ,
            "AGENTMESH_CONTROL_PLANE": self.status()["control_plane"]["grpc"],
            "AGENTMESH_TOKEN": (self.state / "token").read_text().strip(),
        }
        return subprocess.run(
            [*AGENTMESH, *args], env=env, cwd=self.work, capture_output=True, text=True, timeout=60, check=False
        )

    def stop(self) -> int:
        self.process.popen.send_signal(signal.SIGTERM)
        return self.process.popen.wait(90)


def start_up(tmp: Path, mesh: dict[str, Any], *, env: dict[str, str] | None = None, args: tuple[str, ...] = ()) -> Up:
    work = tmp / "work"
    work.mkdir()
    mesh_file = tmp / "mesh.yaml"
    mesh_file.write_text(yaml.safe_dump(mesh))
    log = tmp / "up.log"
    with log.open("wb") as handle:
        popen = subprocess.Popen(
            [*AGENTMESH, "up", "-f", str(mesh_file), *args],
            stdout=handle,
            stderr=subprocess.STDOUT,
            cwd=work,
            env={**os.environ, **(env or {})},
        )
    return Up(Process("up", popen, log), work, mesh_file)


def wait_up(up: Up) -> None:
    wait_for(lambda: "Ctrl-C to stop" in up.process.output(), what="mesh up", timeout=120, process=up.process)
    up.status()


def invoke(address: str, payload: dict[str, Any], *, timeout: float = 10) -> grpc.StatusCode:
    request = agent_pb2.InvokeRequest(skill=SEARCH, json=struct_pb2.Struct())
    request.json.update(payload)
    with grpc.insecure_channel(address) as channel:
        try:
            agent_pb2_grpc.AgentStub(channel).Invoke(request, timeout=timeout)
        except grpc.RpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


def plan(address: str, messages: Messages) -> int:
    with grpc.insecure_channel(address) as channel:
        reply = unary(
            channel,
            "/planning.v1.Planner/Plan",
            messages("planning.v1.PlanRequest", topic="local meshes", max_sections=1),
            messages.cls("planning.v1.PlanResponse"),
            timeout=30,
        )
    return len(reply.sections)  # type: ignore[attr-defined]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as proc:
            return proc.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def json_get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=2) as response:
        return json.loads(response.read())


def assert_stopped_cleanly(up: Up, tmp: Path, ports: list[int]) -> None:
    code = up.stop()
    output = up.process.output()
    assert code == 0, output
    assert "stopped." in output
    assert not (up.state / "status.json").exists()
    assert up.pids, "status.json listed no process"
    left = [pid for pid in up.pids if alive(pid)]
    assert left == [], f"processes left behind: {left}"
    leftovers = subprocess.run(["pgrep", "-f", str(tmp)], capture_output=True, text=True, check=False)
    assert leftovers.stdout.strip() == "", f"processes left behind: {leftovers.stdout}"
    assert [port for port in ports if listening(port)] == []


# --- the whole life of a mesh ----------------------------------------------------------------------------------


@pytest.fixture
def three_agents(tmp_path: Path) -> Iterator[tuple[dict[str, Any], dict[str, SidecarPorts], dict[str, int]]]:
    """researcher, writer and planner on free ports; the planner's calls are routed by the control plane only."""
    ports = {name: SidecarPorts() for name in ("researcher", "writer", "planner")}
    agent_ports = {name: free_port() for name in ports}
    configs = {name: write_config(tmp_path, name, agent_port=agent_ports[name], ports=ports[name]) for name in ports}
    policies = tmp_path / "policies"
    policies.mkdir()
    for name in ("researcher-access.yaml", "researcher-config.yaml"):
        shutil.copy(POLICIES / name, policies / name)
    argv = {
        name: ["{python}", str(EXAMPLES / name / "agent.py"), "--port", "{port}"]
        + (["--version", "v1"] if name == "researcher" else [])
        for name in ports
    }
    mesh = {
        "control_plane": {"listen": "127.0.0.1:0", "http": "127.0.0.1:0"},
        "policies": ["policies/"],
        "agents": [
            {
                "name": name,
                "command": argv[name],
                "sidecar": str(configs[name]),
                "env": {"AGENTMESH_EGRESS_HTTP": "{egress_http}"},
                # The test calls these two from outside the mesh, in plaintext; the writer stays strict.
                **({"mtls": "permissive"} if name in ("researcher", "planner") else {}),
            }
            for name in ports
        ],
    }
    yield mesh, ports, agent_ports


@pytest.mark.timeout(300)
def test_up_runs_control_plane_agents_policies_and_supervision_then_stops_cleanly(
    tmp_path: Path, three_agents: tuple[dict[str, Any], dict[str, SidecarPorts], dict[str, int]]
) -> None:
    mesh, ports, agent_ports = three_agents
    up = start_up(tmp_path, mesh)
    try:
        wait_up(up)
        output = up.process.output()

        # The table, printed once (stdout is not a terminal), every agent healthy.
        lines = output.splitlines()
        assert [line.split() for line in lines].count(TABLE_HEADER) == 1
        for name in ports:
            row = next(line.split() for line in lines if line.startswith(f"{name} "))
            assert row[:4] == [name, "v1", "1/1", "healthy"], row
            assert f"{name}[0] ready: inbound {ports[name].inbound_address}" in output
        assert "admin token" in output
        assert "policy version 1: +AccessPolicy/researcher-access, +AgentConfig/researcher-config" in output

        # The token is the owner's only, and lets the CLI in.
        token = up.state / "token"
        assert stat.S_IMODE(token.stat().st_mode) == 0o600
        assert token.read_text().strip() in output  # printed once, at start-up
        listed = up.cli("agents", "-o", "json")
        assert listed.returncode == 0, listed.stderr
        agents = {a["name"]: a for a in json.loads(listed.stdout)["agents"]}
        assert set(agents) == {"researcher", "writer", "planner"}
        policies = up.cli("policy", "get", "-o", "json")
        assert policies.returncode == 0, policies.stderr
        stored = json.loads(policies.stdout)
        assert int(stored["version"]) >= 1
        assert {d["kind"] for d in stored["items"]} == {"AccessPolicy", "AgentConfig"}
        assert up.status()["policy_version"] >= 1

        # Every sidecar enrolled with the join token up minted for it: mTLS between sidecars.
        for name, mode in (("researcher", "permissive"), ("writer", "strict"), ("planner", "permissive")):
            identity = json_get(f"{ports[name].admin_url}/identity")
            assert (identity["mtls"], identity["mode"]) == (True, mode), identity
            assert identity["spiffe_id"] == f"spiffe://agentmesh.local/team/examples/agent/{name}"
        # The strict writer takes `agentmesh call` with up's client identity, and refuses plaintext.
        assert "client identity spiffe://agentmesh.local/team/operators/agent/agentmesh-cli" in output
        drafted = up.cli("call", "writer", "Draft", "--json", '{"topic": "tides"}', "-f", str(up.mesh_file))
        assert drafted.returncode == 0, drafted.stderr
        assert json.loads(drafted.stdout)["text"]
        plaintext = up.cli(
            "call", "writer", "Draft", "--json", '{"topic": "tides"}', "--address", ports["writer"].inbound_address
        )
        assert plaintext.returncode == 1 and "hint: a sidecar with mTLS strict refuses plaintext" in plaintext.stderr

        # Calls: the planner reaches researcher and writer through routes from the control plane.
        messages = Messages()
        assert plan(ports["planner"].inbound_address, messages) == 1
        with urllib.request.urlopen(f"http://127.0.0.1:{agent_ports['researcher']}/stats", timeout=5) as response:
            seen = json.loads(response.read())["last_headers"]
        assert seen.get("x-agentmesh-config-model") == "small-model"
        # The access policy reached the researcher's sidecar: an anonymous caller is refused.
        wait_for(
            lambda: (
                invoke(ports["researcher"].inbound_address, {"query": "tides", "max_results": 1})
                == grpc.StatusCode.PERMISSION_DENIED
            ),
            what="access policy enforced",
            timeout=30,
        )

        # Prometheus, when installed, finds every sidecar through the control plane.
        status = up.status()
        if PROMETHEUS is None:
            assert status["prometheus"] is None
            assert "prometheus      not started (no `prometheus` on PATH)" in output
        else:
            url = status["prometheus"]
            assert url and f"prometheus      {url}" in output

            def discovered() -> set[str]:
                targets = json_get(f"{url}/api/v1/targets")["data"]["activeTargets"]
                return {t["labels"].get("agent", "") for t in targets if t["labels"]["job"] == "agentmesh-sidecars"}

            wait_for(lambda: discovered() >= set(ports), what="prometheus discovers the sidecars", timeout=60)

        # A crashed agent is restarted, the restart is counted and shown; calls succeed again.
        researcher = up.agent("researcher")
        before = researcher["replicas"][0]["agent_pid"]
        assert researcher["restarts"] == 0
        os.kill(before, signal.SIGKILL)

        def restarted() -> bool:
            now = up.agent("researcher")
            replica = now["replicas"][0]
            return now["restarts"] >= 1 and replica["agent_pid"] not in (None, before) and replica["state"] == "ready"

        wait_for(restarted, what="researcher restarted", timeout=60, process=up.process)
        assert up.agent("researcher")["replicas"][0]["agent_restarts"] >= 1
        wait_for(
            lambda: "researcher v1  replicas 1/1  healthy  restarts 1" in up.process.output(),
            what="a change line with the restart",
            timeout=30,
        )
        output = up.process.output()
        assert "researcher  replica 0 agent exited with code -9; restarting in" in output
        wait_for(lambda: plan(ports["planner"].inbound_address, messages) == 1, what="plan after restart", timeout=30)
    except BaseException:
        up.process.stop()
        raise
    sidecar_ports = [p.inbound for p in ports.values()] + [p.admin for p in ports.values()]
    assert_stopped_cleanly(up, tmp_path, [*agent_ports.values(), *sidecar_ports])


# --- replicas follow calls in flight ---------------------------------------------------------------------------


@pytest.mark.timeout(300)
def test_up_scales_replicas_up_under_load_and_drains_them_when_quiet(tmp_path: Path) -> None:
    ports = SidecarPorts()
    agent_port = free_port()
    config = write_config(tmp_path, "researcher", agent_port=agent_port, ports=ports)
    mesh = {
        "control_plane": {"listen": "127.0.0.1:0", "http": "127.0.0.1:0"},
        "autoscale": {"target_in_flight": 1, "interval": "300ms"},
        "agents": [
            {
                "name": "researcher",
                "command": ["{python}", str(EXAMPLES / "researcher" / "agent.py"), "--port", "{port}"],
                "sidecar": str(config),
                "replicas": {"min": 1, "max": 3},
                "mtls": "permissive",  # the load comes from outside the mesh, in plaintext
            }
        ],
    }
    # No Prometheus on this PATH: up goes on without it.
    empty = tmp_path / "bin"
    empty.mkdir()
    up = start_up(tmp_path, mesh, env={"PATH": str(empty)})
    stop_load = threading.Event()
    workers: list[threading.Thread] = []
    try:
        wait_up(up)
        assert "prometheus      not started (no `prometheus` on PATH)" in up.process.output()
        assert up.status()["prometheus"] is None
        assert up.agent("researcher")["desired"] == 1

        # Slow calls to replica 0 keep 4 calls in flight there: 4 per replica against a target of 1.
        def load() -> None:
            while not stop_load.is_set():
                invoke(ports.inbound_address, {"query": "__slow__", "max_results": 1}, timeout=30)

        workers = [threading.Thread(target=load, daemon=True) for _ in range(4)]
        for worker in workers:
            worker.start()

        def scaled_to(count: int) -> bool:
            agent = up.agent("researcher")
            return agent["desired"] == count and agent["ready"] == count

        wait_for(lambda: scaled_to(3), what="3 ready replicas", timeout=90, process=up.process)
        added = {r["index"]: r for r in up.agent("researcher")["replicas"]}
        assert sorted(added) == [0, 1, 2]
        assert len({r["inbound"] for r in added.values()}) == 3
        # Every replica registered with the control plane as one more instance of researcher v1.
        wait_for(
            lambda: (
                len(json.loads(up.cli("agents", "-o", "json").stdout)["agents"][0]["versions"][0]["instances"]) == 3
            ),
            what="3 registered instances",
            timeout=30,
        )
        stop_load.set()
        for worker in workers:
            worker.join(30)

        wait_for(lambda: scaled_to(1), what="back to 1 replica", timeout=90, process=up.process)
        researcher = up.agent("researcher")
        # Up at once or in steps, as the load ramped; down one replica at a time.
        assert researcher["scale_ups"] >= 1 and researcher["scale_downs"] == 2
        assert [r["index"] for r in researcher["replicas"]] == [0]
        wait_for(lambda: not up.agent("researcher")["draining"], what="drains finished", timeout=60)
        for index in (1, 2):
            gone = added[index]
            assert not alive(gone["agent_pid"]) and not alive(gone["sidecar_pid"])
        output = up.process.output()
        assert "researcher  scale up 1 -> " in output
        assert "researcher  scale down 3 -> 2: " in output and "researcher  scale down 2 -> 1: " in output
        assert "researcher  replica 2 draining (sidecar first, then agent)" in output
        assert "researcher  replica 1 stopped" in output
        wait_for(
            lambda: "researcher v1  replicas 1/1  healthy  restarts 0" in up.process.output(),
            what="a change line back at one replica",
            timeout=30,
        )
    except BaseException:
        stop_load.set()
        up.process.stop()
        raise
    assert_stopped_cleanly(up, tmp_path, [agent_port, ports.inbound, ports.admin])


@pytest.mark.timeout(120)
def test_up_reports_an_agent_that_never_gets_ready_and_exits_3(tmp_path: Path) -> None:
    ports = SidecarPorts()
    agent_port = free_port()
    config = write_config(tmp_path, "researcher", agent_port=agent_port, ports=ports)
    mesh = {
        "control_plane": {"listen": "127.0.0.1:0", "http": "127.0.0.1:0"},
        "agents": [
            {"name": "broken", "command": ["{python}", "-c", "import sys; sys.exit(4)"], "sidecar": str(config)}
        ],
    }
    up = start_up(tmp_path, mesh, args=("--ready-timeout", "3", "--no-prometheus"))
    try:
        wait_up(up)
        output = up.process.output()
        assert "broken[0] NOT READY after 3s: agent not healthy" in output
        assert "broken  replica 0 agent exited with code 4; restarting in" in output
        row = next(line.split() for line in output.splitlines() if line.startswith("broken "))
        assert row[2:4] == ["0/1", "unhealthy"]
        assert int(row[-1]) >= 1  # RESTARTS
        assert "prometheus      not started (disabled)" in output
    except BaseException:
        up.process.stop()
        raise
    code = up.stop()
    assert code == 3, up.process.output()
    left = [pid for pid in up.pids if alive(pid)]
    assert left == []


# --- refusals --------------------------------------------------------------------------------------------------


def run_up(mesh_file: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*AGENTMESH, "up", "-f", str(mesh_file)], capture_output=True, text=True, cwd=cwd, timeout=60, check=False
    )


def test_up_refuses_an_invalid_mesh_file(tmp_path: Path) -> None:
    mesh_file = tmp_path / "mesh.yaml"
    mesh_file.write_text(
        "agents:\n"
        "  - name: a\n"
        "    command: []\n"
        "    sidecar: missing.yaml\n"
        "  - name: b\n"
        "    command: [x, --port, '8080']\n"
        f"    sidecar: {EXAMPLES / 'researcher' / 'agent.yaml'}\n"
        "    replicas: {min: 1, max: 2}\n"
    )
    result = run_up(mesh_file, tmp_path)
    assert result.returncode == 2
    assert f"{mesh_file}:3: agents[0].command:" in result.stderr
    assert f"{mesh_file}:4: agents[0].sidecar: not found" in result.stderr
    assert f"{mesh_file}:8: agents[1].replicas: max 2 needs '{{port}}' in the command" in result.stderr
    assert not (tmp_path / ".agentmesh").exists(), "nothing is started for an invalid mesh file"


def test_up_refuses_invalid_policies_before_starting_anything(tmp_path: Path) -> None:
    policy = tmp_path / "policies" / "canary.yaml"
    policy.parent.mkdir()
    policy.write_text(
        "apiVersion: agentmesh.io/v1\n"
        "kind: TrafficPolicy\n"
        "metadata: {name: canary}\n"
        "spec:\n"
        "  target: researcher\n"
        "  split:\n"
        "    - {version: v1, weight: 90}\n"
        "    - {version: v2, weight: 20}\n"
    )
    mesh_file = tmp_path / "mesh.yaml"
    mesh_file.write_text(
        "policies: [policies/]\n"
        "agents:\n"
        f"  - {{name: a, command: [x], sidecar: {EXAMPLES / 'researcher' / 'agent.yaml'}}}\n"
    )
    result = run_up(mesh_file, tmp_path)
    assert result.returncode == 2
    assert f"{policy}:6: spec.split: weights must sum to 100, got 110" in result.stderr
    assert not (tmp_path / ".agentmesh").exists()


def test_up_exits_3_when_the_control_plane_port_is_taken(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        mesh_file = tmp_path / "mesh.yaml"
        mesh_file.write_text(
            f"control_plane: {{listen: '127.0.0.1:0', http: '127.0.0.1:{port}'}}\n"
            "agents:\n"
            f"  - {{name: a, command: [x], sidecar: {EXAMPLES / 'researcher' / 'agent.yaml'}}}\n"
        )
        result = run_up(mesh_file, tmp_path)
    assert result.returncode == 3, result.stdout + result.stderr
    assert f"error: cannot start the control plane on 127.0.0.1:0 / 127.0.0.1:{port}" in result.stderr
    assert "starting" not in result.stdout
