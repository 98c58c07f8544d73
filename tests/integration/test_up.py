"""`agentmesh up` runs a mesh of real agents and sidecars, and stops it without orphans."""

from __future__ import annotations

import signal
import socket
import subprocess
from pathlib import Path

import grpc
import yaml

from tests.integration.mesh import Messages, SidecarPorts, agent_argv, unary, write_config
from tests.integration.procs import AGENTMESH, ROOT, free_port, start, wait_for


def test_up_starts_the_mesh_and_stops_it_cleanly(tmp_path: Path) -> None:
    ports = {name: SidecarPorts() for name in ("researcher", "writer", "planner")}
    agent_ports = {name: free_port() for name in ports}
    planner_targets = [{"name": t, "address": ports[t].inbound_address} for t in ("researcher", "writer")]
    configs = {
        name: write_config(tmp_path, name, agent_port=agent_ports[name], ports=ports[name])
        for name in ("researcher", "writer")
    }
    configs["planner"] = write_config(
        tmp_path, "planner", agent_port=agent_ports["planner"], ports=ports["planner"], targets=planner_targets
    )
    mesh = {
        "agents": [
            {
                "name": name,
                "command": ["{python}", *agent_argv(name, agent_ports[name])[1:]],
                "sidecar": str(configs[name]),
                "env": {"AGENTMESH_EGRESS_HTTP": ports[name].egress_http_url},
            }
            for name in ports
        ]
    }
    mesh_file = tmp_path / "mesh.yaml"
    mesh_file.write_text(yaml.safe_dump(mesh))
    up = start("up", [*AGENTMESH, "up", "-f", str(mesh_file), "--logs", str(tmp_path / "logs")], tmp_path)
    try:
        wait_for(lambda: "Ctrl-C to stop" in up.output(), what="mesh up", timeout=90, process=up)
        output = up.output()
        for name in ports:
            assert f"{name} " in output and "NOT READY" not in output
        messages = Messages()
        with grpc.insecure_channel(ports["planner"].inbound_address) as channel:
            reply = unary(
                channel,
                "/planning.v1.Planner/Plan",
                messages("planning.v1.PlanRequest", topic="local meshes", max_sections=1),
                messages.cls("planning.v1.PlanResponse"),
                timeout=30,
            )
        assert len(reply.sections) == 1  # type: ignore[attr-defined]
    finally:
        up.popen.send_signal(signal.SIGTERM)
        assert up.popen.wait(60) == 0, up.output()
    assert "stopped." in up.output()
    leftovers = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True)
    assert leftovers.stdout.strip() == "", f"sidecars left behind: {leftovers.stdout}"
    for name, port in agent_ports.items():
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", port)) != 0, f"{name} agent still listening on {port}"


def test_up_refuses_an_invalid_mesh_file(tmp_path: Path) -> None:
    mesh_file = tmp_path / "mesh.yaml"
    mesh_file.write_text("agents:\n  - name: a\n    command: []\n    sidecar: missing.yaml\n")
    result = subprocess.run(
        [*AGENTMESH, "up", "-f", str(mesh_file)], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert result.returncode == 2
    assert f"{mesh_file}:3: agents[0].command:" in result.stderr
    assert f"{mesh_file}:4: agents[0].sidecar: not found" in result.stderr
