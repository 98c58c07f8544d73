"""Plain-data inputs for translation tests, and a consistency check of the output."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from control_plane.policy.model import Policy, policy_from_dict
from control_plane.policy.validate import load_documents
from control_plane.translate import AgentView, InstanceView, MeshView, Resources

EXAMPLES = Path(__file__).resolve().parents[4] / "examples" / "policies"
RESEARCH = "research.v1.Researcher"
SEARCH = "research.v1.Researcher/Search"
WRITER = "writing.v1.Writer"


def example_mesh(research_port: int = 7001) -> MeshView:
    """The example agents: researcher v1 and v2, planner, writer (a second Researcher implementation)."""
    return MeshView.of(
        AgentView(
            "researcher",
            team="research",
            versions={
                "v1": (InstanceView(f"127.0.0.1:{research_port}"), InstanceView("127.0.0.2:7001", zone="b")),
                "v2": (InstanceView("127.0.0.3:7001", healthy=False),),
            },
            services=(RESEARCH,),
            methods=(SEARCH, "research.v1.Researcher/Summon"),
            idempotent_methods=frozenset({SEARCH}),
        ),
        AgentView(
            "planner",
            team="planning",
            versions={"v1": (InstanceView("localhost:7003"),)},
            services=("planning.v1.Planner",),
            methods=("planning.v1.Planner/Plan",),
        ),
        AgentView(
            "writer",
            team="writing",
            versions={"v1": (InstanceView("127.0.0.4:7004"),), "v2": (InstanceView("127.0.0.5:7004"),), "v3": ()},
            services=(WRITER, RESEARCH),
            methods=(f"{WRITER}/Draft", SEARCH),
            idempotent_methods=frozenset({SEARCH}),
        ),
    )


def example_policies() -> list[Policy]:
    return [d.policy for d in load_documents([EXAMPLES])]


def policy(kind: str, spec: dict[str, Any], name: str = "p") -> Policy:
    return policy_from_dict({"kind": kind, "metadata": {"name": name}, "spec": spec})


def consistency_problems(resources: Resources) -> list[str]:
    """What a consumer would trip over: routes to missing clusters, EDS without assignments, RDS without routes."""
    from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm

    problems = []
    for name, route_config in resources.routes.items():
        for host in route_config.virtual_hosts:
            for route in host.routes:
                action = route.route
                targets = [action.cluster] if action.cluster else [c.name for c in action.weighted_clusters.clusters]
                if not route.HasField("route") or not targets:
                    problems.append(f"{name}: route {route.name} has no cluster")
                problems += [f"{name}: unknown cluster {t}" for t in targets if t not in resources.clusters]
    for name, cluster in resources.clusters.items():
        service = cluster.eds_cluster_config.service_name or name
        if service not in resources.endpoints:
            problems.append(f"cluster {name}: no assignment {service}")
    for name, listener in resources.listeners.items():
        if listener.HasField("api_listener"):
            manager = hcm.HttpConnectionManager()
            listener.api_listener.api_listener.Unpack(manager)
            if manager.rds.route_config_name not in resources.routes:
                problems.append(f"listener {name}: unknown route configuration {manager.rds.route_config_name}")
    return problems
