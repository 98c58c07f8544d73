"""`agentmesh control-plane` as a process, driven by the real CLI: apply, get, history, rollback, proxy-status."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import yaml

from tests.integration.controlplane import ControlPlaneProcess
from tests.integration.procs import AGENTMESH, ROOT, free_port
from tests.unit.control_plane.xds.ads_client import ALL_TYPES, AdsClient

EXAMPLES = ROOT / "examples" / "policies"


def test_policy_lifecycle_through_the_cli_survives_a_restart(control_plane: ControlPlaneProcess, tmp_path: Path):
    applied = control_plane.cli("policy", "apply", "-f", str(EXAMPLES), "-m", "examples")
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.splitlines() == [
        "accesspolicy/researcher-access created",
        "agentconfig/researcher-config created",
        "trafficpolicy/researcher-canary created",
    ]
    # Nothing is registered yet: warnings, not errors.
    assert "warning: " in applied.stderr and "policy version 1" in applied.stderr

    canary = yaml.safe_load((EXAMPLES / "researcher-traffic.yaml").read_text())
    canary["spec"]["split"] = [{"version": "v1", "weight": 50}, {"version": "v2", "weight": 50}]
    (tmp_path / "canary.yaml").write_text(yaml.safe_dump(canary))
    changed = control_plane.cli("policy", "apply", "-f", str(tmp_path / "canary.yaml"), "-m", "50/50")
    assert changed.returncode == 0, changed.stderr
    assert changed.stdout == "trafficpolicy/researcher-canary configured\n"

    invalid = dict(canary, spec={**canary["spec"], "split": [{"version": "v1", "weight": 70}]})
    (tmp_path / "invalid.yaml").write_text(yaml.safe_dump(invalid))
    refused = control_plane.cli("policy", "apply", "-f", str(tmp_path / "invalid.yaml"))
    assert refused.returncode == 2
    assert "invalid.yaml:" in refused.stderr and "weights must sum to 100, got 70" in refused.stderr

    history = control_plane.cli("policy", "history", "-o", "json")
    assert [(v["version"], v["message"]) for v in json.loads(history.stdout)] == [("2", "50/50"), ("1", "examples")]

    rolled = control_plane.cli("policy", "rollback", "1")
    assert (rolled.returncode, rolled.stdout) == (0, "trafficpolicy/researcher-canary configured\n")
    assert "policy version 3" in rolled.stderr

    control_plane.stop()
    again = ControlPlaneProcess(tmp_path, tmp_path / "cp.db")
    try:
        listing = again.cli("policy", "get", "tp", "researcher-canary", "-o", "json")
        assert listing.returncode == 0, listing.stderr
        stored = json.loads(listing.stdout)
        assert stored["version"] == 3
        assert stored["items"][0]["spec"]["split"][0] == {"version": "v1", "weight": 90}
    finally:
        again.stop()


def test_bad_token_and_unreachable_control_plane(control_plane: ControlPlaneProcess):
    wrong = control_plane.cli("policy", "get", AGENTMESH_TOKEN="nope")
    assert wrong.returncode == 1
    assert "invalid token" in wrong.stderr

    gone = control_plane.cli("agents", AGENTMESH_CONTROL_PLANE=f"127.0.0.1:{free_port()}")
    assert gone.returncode == 3
    assert "cannot reach the control plane" in gone.stderr


async def _proxy_status_while_connected(control_plane: ControlPlaneProcess) -> str:
    """Runs `agentmesh proxy-status -o json` while a proxy is connected, until it shows every type SYNCED."""
    client = AdsClient(control_plane.grpc_port, "planner-1")
    try:
        await client.subscribe_all()
        for _ in ALL_TYPES:
            await client.ack(await client.recv())
        for _attempt in range(100):
            process = await asyncio.create_subprocess_exec(
                *AGENTMESH,
                "proxy-status",
                "-o",
                "json",
                env=control_plane.env(),
                cwd=ROOT,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            out, err = await process.communicate()
            assert process.returncode == 0, err.decode()
            proxies = json.loads(out)["proxies"]
            if proxies and all(r["status"] == "SYNCED" for r in proxies[0]["resources"]):
                return out.decode()
            await asyncio.sleep(0.05)
        raise AssertionError(f"planner-1 never showed as SYNCED: {out.decode()}")
    finally:
        await client.close()


def test_proxy_status_shows_a_connected_proxy(control_plane: ControlPlaneProcess):
    output = asyncio.run(_proxy_status_while_connected(control_plane))

    proxy = json.loads(output)["proxies"][0]
    assert (proxy["node_id"], proxy["cluster"]) == ("planner-1", "planner")
    assert [r["type"] for r in proxy["resources"]] == ["lds", "rds", "cds", "eds"]

    table = control_plane.cli("proxy-status")
    assert table.returncode == 0
    assert table.stderr.startswith("No proxies connected")


def test_the_cli_runs_as_a_module():
    result = subprocess.run([sys.executable, "-m", "agentmesh.cli", "policy", "--help"], capture_output=True, text=True)

    assert result.returncode == 0
    assert "trafficpolicies, tp" in result.stdout
