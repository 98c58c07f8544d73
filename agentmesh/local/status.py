"""`.agentmesh/status.json`: the running local mesh, for scripts, tests and `agentmesh stat`.

Rewritten (atomically) on every refresh of `agentmesh up` and removed when
it stops. It holds up's own PID, the control plane's addresses, the policy
version, Prometheus' URL, and per entry its figures, counters and replicas,
each replica with its agent and sidecar PIDs and addresses:

    {"pid": 4242, "control_plane": {"grpc": "127.0.0.1:15010", "http": "http://127.0.0.1:18080", ...},
     "policy_version": 1, "prometheus": "http://127.0.0.1:38117",
     "agents": [{"name": "researcher", "agent": "researcher", "version": "v1", "desired": 2, "ready": 2,
                 "health": "healthy", "restarts": 0, "scale_ups": 1, "scale_downs": 0, ...,
                 "replicas": [{"index": 0, "state": "ready", "agent_pid": 4250, "sidecar_pid": 4251,
                               "agent_port": 8201, "inbound": "127.0.0.1:15206",
                               "admin": "http://127.0.0.1:15200", ...}]}]}
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from agentmesh.cli.stat import Sidecar
from agentmesh.local.replicas import AgentReplicas, Replica, reachable
from agentmesh.local.state import write_atomically
from agentmesh.local.table import AgentFigures

STATUS_VERSION = 1


@dataclass(frozen=True)
class ReplicaStatus:
    index: int
    state: str
    agent_pid: int | None
    sidecar_pid: int | None
    agent_restarts: int
    sidecar_restarts: int
    agent_port: int
    inbound: str
    egress_grpc: str
    egress_http: str
    admin: str
    config: str

    @classmethod
    def of(cls, replica: Replica) -> ReplicaStatus:
        return cls(
            index=replica.index,
            state=replica.state,
            agent_pid=replica.agent.pid,
            sidecar_pid=replica.sidecar.pid,
            agent_restarts=replica.agent.restarts,
            sidecar_restarts=replica.sidecar.restarts,
            agent_port=replica.ports.agent,
            inbound=replica.inbound,
            egress_grpc=reachable(replica.ports.egress_grpc),
            egress_http=f"http://{reachable(replica.ports.egress_http)}",
            admin=replica.admin_url,
            config=str(replica.config.resolve()),
        )


@dataclass(frozen=True)
class AgentStatus:
    name: str
    agent: str
    version: str
    desired: int
    ready: int
    health: str
    restarts: int
    scale_ups: int
    scale_downs: int
    rps: float | None
    error_rate: float | None
    p99: float | None
    in_flight: float | None
    replicas: tuple[ReplicaStatus, ...]
    draining: tuple[ReplicaStatus, ...] = ()

    @classmethod
    def of(cls, group: AgentReplicas, figures: AgentFigures) -> AgentStatus:
        return cls(
            name=group.name,
            agent=group.bootstrap.agent.name,
            version=group.bootstrap.agent.version,
            desired=group.desired,
            ready=group.ready,
            health=figures.health,
            restarts=group.restarts,
            scale_ups=group.scale_ups,
            scale_downs=group.scale_downs,
            rps=figures.rps,
            error_rate=figures.error_rate,
            p99=figures.p99,
            in_flight=figures.in_flight,
            replicas=tuple(ReplicaStatus.of(r) for r in sorted(group.live, key=lambda r: r.index)),
            draining=tuple(ReplicaStatus.of(r) for r in group.draining),
        )


@dataclass(frozen=True)
class MeshStatus:
    """The whole status document."""

    pid: int
    mesh_file: str
    control_plane: dict[str, str]
    policy_version: int
    prometheus: str | None
    prometheus_pid: int | None
    agents: tuple[AgentStatus, ...] = ()
    version: int = STATUS_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def write(self, path: Path) -> None:
        write_atomically(path, self.to_json() + "\n")


def read_status(path: Path) -> dict[str, Any]:
    """The status document as JSON data; raises OSError or ValueError when there is none or it is unreadable."""
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or data.get("version") != STATUS_VERSION:
        raise ValueError(f"{path}: not an agentmesh up status file (version {STATUS_VERSION})")
    return data


def sidecars(data: dict[str, Any]) -> list[Sidecar]:
    """Every live replica's sidecar in a status document, as `agentmesh stat` reads them."""
    found: list[Sidecar] = []
    for agent in data.get("agents", []):
        for replica in agent.get("replicas", []):
            found.append(Sidecar(replica["admin"], agent["agent"], agent["version"]))
    return found


def sidecars_in(path: Path) -> Sequence[Sidecar]:
    """`sidecars(read_status(path))`: what `agentmesh stat` would read for a running `agentmesh up`."""
    return sidecars(read_status(path))
