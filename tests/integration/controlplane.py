"""The control plane as a real process for integration tests."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from tests.integration.procs import AGENTMESH, ROOT, Process, free_port, grpc_serving, start, wait_for

TOKEN = "integration-token"


class ControlPlaneProcess:
    """One `agentmesh control-plane` process on free loopback ports, over one SQLite file."""

    def __init__(self, tmp_path: Path, db: Path, *extra_args: str) -> None:
        self.grpc_port, self.http_port = free_port(), free_port()
        self.address = f"127.0.0.1:{self.grpc_port}"
        argv = [
            *AGENTMESH,
            "control-plane",
            "--listen",
            self.address,
            "--http",
            f"127.0.0.1:{self.http_port}",
            "--db",
            str(db),
            "--token",
            TOKEN,
            *extra_args,
        ]
        self.process: Process = start(f"control-plane-{self.grpc_port}", argv, tmp_path)
        wait_for(lambda: grpc_serving(self.address), what="control plane serving", process=self.process)

    @property
    def http_url(self) -> str:
        """Where /healthz, /readyz and /metrics are served."""
        return f"http://127.0.0.1:{self.http_port}"

    def env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, "AGENTMESH_CONTROL_PLANE": self.address, "AGENTMESH_TOKEN": TOKEN, **extra}

    def cli(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*AGENTMESH, *args], env=self.env(**env), cwd=ROOT, capture_output=True, text=True, timeout=60
        )

    def proxy_status(self, node_id: str) -> dict[str, tuple[str, str]]:
        """`agentmesh proxy-status -o json` for one node: type -> (status, error); empty while it is not connected."""
        shown = self.cli("proxy-status", "-o", "json")
        assert shown.returncode == 0, shown.stderr
        for proxy in json.loads(shown.stdout).get("proxies", []):
            if proxy["node_id"] == node_id:
                return {r["type"]: (r["status"], r.get("error", "")) for r in proxy["resources"]}
        return {}

    def stop(self) -> None:
        assert self.process.stop() == 0, self.process.output()
