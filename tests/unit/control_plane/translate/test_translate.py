"""Translation with plain data: resource names, clusters, endpoints, routes, RBAC, config headers."""

from __future__ import annotations

import subprocess
import sys

import pytest
from envoy.config.core.v3 import health_check_pb2
from envoy.config.rbac.v3 import rbac_pb2 as rbac_config
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as rbac_filter
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm
from envoy.extensions.load_balancing_policies.ring_hash.v3 import ring_hash_pb2

from control_plane.translate import (
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    LISTENER_TYPE,
    ROUTE_TYPE,
    AgentView,
    InstanceView,
    MeshView,
    Resources,
    translate,
)
from control_plane.translate.rbac import agent_principal, team_principal
from tests.unit.control_plane.translate.meshes import (
    RESEARCH,
    SEARCH,
    WRITER,
    consistency_problems,
    example_mesh,
    example_policies,
    policy,
)


def routes_of(resources: Resources, name: str) -> list[rc.Route]:
    return list(resources.routes[name].virtual_hosts[0].routes)


def route_named(resources: Resources, config: str, name: str) -> rc.Route:
    matches = [r for r in routes_of(resources, config) if r.name == name]
    assert len(matches) == 1, [r.name for r in routes_of(resources, config)]
    return matches[0]


def weights(route: rc.Route) -> dict[str, int]:
    if route.route.cluster:
        return {route.route.cluster: 100}
    return {c.name: c.weight.value for c in route.route.weighted_clusters.clusters}


def inbound_manager(resources: Resources, agent: str) -> hcm.HttpConnectionManager:
    listener = resources.listeners[f"inbound/{agent}"]
    manager = hcm.HttpConnectionManager()
    listener.filter_chains[0].filters[0].typed_config.Unpack(manager)
    return manager


def rbac_rules(manager: hcm.HttpConnectionManager) -> dict[str, rbac_config.RBAC]:
    found = {}
    for http_filter in manager.http_filters:
        if http_filter.typed_config.Is(rbac_filter.RBAC.DESCRIPTOR):
            config = rbac_filter.RBAC()
            http_filter.typed_config.Unpack(config)
            found[http_filter.name] = config.rules
    return found


@pytest.fixture
def resources() -> Resources:
    return translate(example_policies(), example_mesh())


def test_resource_names_follow_the_mapping_table(resources: Resources) -> None:
    assert list(resources.clusters) == [
        "agent/planner/v1",
        "agent/researcher/v1",
        "agent/researcher/v2",
        "agent/writer/v1",
        "agent/writer/v2",
        "agent/writer/v3",
        "service/planning.v1.Planner",
        "service/research.v1.Researcher",
        "service/writing.v1.Writer",
    ]
    assert list(resources.endpoints) == list(resources.clusters)
    assert list(resources.routes) == [
        "agent/planner",
        "agent/researcher",
        "agent/writer",
        "service/planning.v1.Planner",
        "service/research.v1.Researcher",
        "service/writing.v1.Writer",
    ]
    assert list(resources.listeners) == [
        "inbound/planner",
        "inbound/researcher",
        "inbound/writer",
        "planner",
        "planning.v1.Planner",
        "research.v1.Researcher",
        "researcher",
        "writer",
        "writing.v1.Writer",
    ]
    assert list(resources.by_type_url()) == [CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE]
    assert resources[ROUTE_TYPE] is resources.routes
    assert len(list(resources)) == 9 + 9 + 9 + 6
    with pytest.raises(KeyError, match="not an xDS resource type"):
        resources["type.googleapis.com/envoy.config.core.v3.Secret"]
    assert consistency_problems(resources) == []
    assert resources.notes == ()


def test_translation_is_deterministic() -> None:
    one = translate(example_policies(), example_mesh())
    two = translate(list(reversed(example_policies())), example_mesh())
    assert [(t, n, m.SerializeToString(deterministic=True)) for t, n, m in one] == [
        (t, n, m.SerializeToString(deterministic=True)) for t, n, m in two
    ]


def test_translation_imports_neither_grpc_nor_sqlite() -> None:
    code = (
        "import sys, control_plane.translate\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('grpc', 'sqlite3', '_sqlite3')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"


# --- clusters -----------------------------------------------------------------------------------------------------


def test_version_cluster_is_eds_over_ads_with_http2_and_policy_settings(resources: Resources) -> None:
    cluster = resources.clusters["agent/researcher/v1"]
    assert cluster.type == cluster.EDS
    assert cluster.eds_cluster_config.service_name == "agent/researcher/v1"
    assert cluster.eds_cluster_config.eds_config.HasField("ads")
    assert "envoy.extensions.upstreams.http.v3.HttpProtocolOptions" in cluster.typed_extension_protocol_options
    policies = [p.typed_extension_config.name for p in cluster.load_balancing_policy.policies]
    assert policies == ["envoy.load_balancing_policies.least_request", "envoy.load_balancing_policies.round_robin"]
    detection = cluster.outlier_detection
    assert (detection.consecutive_5xx.value, detection.enforcing_consecutive_5xx.value) == (5, 100)
    assert (detection.interval.seconds, detection.base_ejection_time.seconds) == (10, 30)
    assert detection.max_ejection_percent.value == 50
    assert detection.enforcing_success_rate.value == 0
    thresholds = cluster.circuit_breakers.thresholds[0]
    assert (thresholds.max_requests.value, thresholds.max_pending_requests.value) == (100, 50)
    assert not thresholds.HasField("max_connections")
    assert thresholds.retry_budget.budget_percent.value == 20.0
    assert thresholds.retry_budget.min_retry_concurrency.value == 3


def test_cluster_without_policy_gets_the_defaults(resources: Resources) -> None:
    cluster = resources.clusters["agent/planner/v1"]
    assert not cluster.HasField("outlier_detection")
    thresholds = cluster.circuit_breakers.thresholds[0]
    assert not thresholds.HasField("max_requests")
    assert (thresholds.retry_budget.budget_percent.value, thresholds.retry_budget.min_retry_concurrency.value) == (
        20,
        3,
    )


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"load_balancing": "round_robin"}, ["envoy.load_balancing_policies.round_robin"]),
        (
            {"load_balancing": "peak_ewma"},
            [
                "agentmesh.peak_ewma",
                "envoy.load_balancing_policies.least_request",
                "envoy.load_balancing_policies.round_robin",
            ],
        ),
        ({"sticky": {"header": "x-session"}}, ["envoy.load_balancing_policies.ring_hash"]),
    ],
)
def test_load_balancing_choices(spec: dict, expected: list[str]) -> None:
    resources = translate([policy("TrafficPolicy", {"target": "planner", **spec})], example_mesh())
    policies = resources.clusters["agent/planner/v1"].load_balancing_policy.policies
    assert [p.typed_extension_config.name for p in policies] == expected
    if "sticky" in spec:
        assert policies[0].typed_extension_config.typed_config.Is(ring_hash_pb2.RingHash.DESCRIPTOR)


def test_outlier_detection_options_and_budget() -> None:
    spec = {
        "target": "planner",
        "retries": {"budget": {"percent": 5.5, "min_concurrency": 1}},
        "circuit_breaker": {"max_connections": 7},
        "outlier_detection": {
            "consecutive_errors": 3,
            "interval": "500ms",
            "success_rate": {"minimum_hosts": 3, "request_volume": 20, "stdev_factor": 1.5},
            "failure_percentage": {"threshold": 60},
        },
    }
    cluster = translate([policy("TrafficPolicy", spec)], example_mesh()).clusters["agent/planner/v1"]
    detection = cluster.outlier_detection
    assert detection.consecutive_5xx.value == 3
    assert (detection.interval.seconds, detection.interval.nanos) == (0, 500_000_000)
    assert detection.enforcing_success_rate.value == 100
    assert (detection.success_rate_minimum_hosts.value, detection.success_rate_request_volume.value) == (3, 20)
    assert detection.success_rate_stdev_factor.value == 1500
    assert (detection.enforcing_failure_percentage.value, detection.failure_percentage_threshold.value) == (100, 60)
    thresholds = cluster.circuit_breakers.thresholds[0]
    assert thresholds.max_connections.value == 7
    assert thresholds.retry_budget.budget_percent.value == pytest.approx(5.5)
    assert thresholds.retry_budget.min_retry_concurrency.value == 1


# --- endpoints ----------------------------------------------------------------------------------------------------


def test_assignments_have_weighted_localities_and_health(resources: Resources) -> None:
    v1 = resources.endpoints["agent/researcher/v1"]
    assert v1.cluster_name == "agent/researcher/v1"
    localities = {(e.locality.zone, e.load_balancing_weight.value) for e in v1.endpoints}
    assert localities == {("default", 1), ("b", 1)}
    v2 = resources.endpoints["agent/researcher/v2"].endpoints[0].lb_endpoints[0]
    assert v2.endpoint.address.socket_address.address == "127.0.0.3"
    assert v2.health_status == health_check_pb2.UNHEALTHY
    planner = resources.endpoints["agent/planner/v1"].endpoints[0]
    assert planner.lb_endpoints[0].endpoint.address.socket_address.address == "127.0.0.1"
    assert planner.lb_endpoints[0].endpoint.address.socket_address.port_value == 7003
    assert planner.lb_endpoints[0].health_status == health_check_pb2.HEALTHY
    assert list(resources.endpoints["agent/writer/v3"].endpoints) == []


def test_service_assignment_holds_every_implementation(resources: Resources) -> None:
    assignment = resources.endpoints[f"service/{RESEARCH}"]
    addresses = sorted(
        e.endpoint.address.socket_address.address for locality in assignment.endpoints for e in locality.lb_endpoints
    )
    assert addresses == ["127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"]
    default_zone = next(e for e in assignment.endpoints if e.locality.zone == "default")
    assert default_zone.load_balancing_weight.value == 4


def test_bad_addresses_are_left_out_with_a_note() -> None:
    mesh = MeshView.of(
        AgentView("a", versions={"v1": (InstanceView("a.internal:80"), InstanceView("10.0.0.1:1")), "v2": ()})
    )
    resources = translate([], mesh)
    endpoints = resources.endpoints["agent/a/v1"].endpoints[0].lb_endpoints
    assert [e.endpoint.address.socket_address.address for e in endpoints] == ["10.0.0.1"]
    assert resources.notes == (
        "agent/a/v1: instance left out: invalid address 'a.internal:80': the host must be an IP address",
    )
    assert consistency_problems(resources) == []


# --- routes -------------------------------------------------------------------------------------------------------


def test_agent_route_config_canary_pins_and_beta_route(resources: Resources) -> None:
    config = resources.routes["agent/researcher"]
    host = config.virtual_hosts[0]
    assert (config.name, host.name, list(host.domains)) == (
        "agent/researcher",
        "agent/researcher",
        ["researcher", "researcher:*"],
    )
    names = [r.name for r in host.routes]
    # Summon is not idempotent: every route that retries and covers it is preceded by one that does not retry.
    assert names == [
        "researcher-canary/beta-testers/pin/v1/no-retry/research.v1.Researcher/Summon",
        "researcher-canary/beta-testers/pin/v1",
        "researcher-canary/beta-testers/pin/v2/no-retry/research.v1.Researcher/Summon",
        "researcher-canary/beta-testers/pin/v2",
        "researcher-canary/beta-testers/no-retry/research.v1.Researcher/Summon",
        "researcher-canary/beta-testers",
        "default/pin/v1/no-retry/research.v1.Researcher/Summon",
        "default/pin/v1",
        "default/pin/v2/no-retry/research.v1.Researcher/Summon",
        "default/pin/v2",
        "default/no-retry/research.v1.Researcher/Summon",
        "default",
    ]
    beta = route_named(resources, "agent/researcher", "researcher-canary/beta-testers")
    assert beta.match.prefix == "/research.v1.Researcher/"
    assert [(h.name, h.string_match.exact) for h in beta.match.headers] == [("x-tenant", "beta")]
    assert weights(beta) == {"agent/researcher/v2": 100}
    default = route_named(resources, "agent/researcher", "default")
    assert default.match.prefix == "/" and not default.match.headers
    assert weights(default) == {"agent/researcher/v1": 90, "agent/researcher/v2": 10}
    pin = route_named(resources, "agent/researcher", "default/pin/v2")
    assert [(h.name, h.string_match.exact) for h in pin.match.headers] == [("x-agentmesh-version", "v2")]
    assert pin.route.cluster == "agent/researcher/v2"
    assert pin.route.retry_policy.num_retries.value == 2


def test_timeout_and_retry_policy_fields(resources: Resources) -> None:
    action = route_named(resources, "agent/researcher", "default").route
    assert action.timeout.seconds == 20
    assert action.max_stream_duration.max_stream_duration.seconds == 20
    assert action.max_stream_duration.grpc_timeout_header_max.seconds == 20
    retry = action.retry_policy
    assert retry.retry_on == "unavailable,resource-exhausted"
    assert retry.num_retries.value == 2
    assert retry.per_try_timeout.seconds == 8
    assert retry.retry_back_off.base_interval.nanos == 100_000_000
    assert retry.retry_back_off.max_interval.seconds == 1


def test_non_idempotent_skills_are_not_retried(resources: Resources) -> None:
    no_retry = route_named(resources, "agent/researcher", "default/no-retry/research.v1.Researcher/Summon")
    assert no_retry.match.path == "/research.v1.Researcher/Summon"
    assert not no_retry.route.HasField("retry_policy")
    assert weights(no_retry) == {"agent/researcher/v1": 90, "agent/researcher/v2": 10}
    spec = {
        "target": "researcher",
        "retries": {"attempts": 1},
        "routes": [
            {"name": "summon", "match": [{"method": "research.v1.Researcher/Summon"}]},
            {"name": "search", "match": [{"method": SEARCH}]},
        ],
        "version_header": None,
    }
    resources = translate([policy("TrafficPolicy", spec)], example_mesh())
    assert not route_named(resources, "agent/researcher", "p/summon").route.HasField("retry_policy")
    assert route_named(resources, "agent/researcher", "p/search").route.retry_policy.num_retries.value == 1
    spec["retries"] = {"attempts": 1, "retry_non_idempotent": True}
    resources = translate([policy("TrafficPolicy", spec)], example_mesh())
    assert route_named(resources, "agent/researcher", "p/summon").route.HasField("retry_policy")
    assert [r.name for r in routes_of(resources, "agent/researcher")] == ["p/summon", "p/search", "default"]


def test_without_policy_versions_with_instances_share_equally(resources: Resources) -> None:
    names = [r.name for r in routes_of(resources, "agent/writer")]
    assert names == ["default/pin/v1", "default/pin/v2", "default/pin/v3", "default"]
    default = route_named(resources, "agent/writer", "default")
    assert weights(default) == {"agent/writer/v1": 1, "agent/writer/v2": 1}
    assert not default.route.HasField("retry_policy")
    # No policy timeout: Envoy's 15 s default is turned off and the caller's deadline governs.
    assert default.route.HasField("timeout") and default.route.timeout.seconds == 0
    assert default.route.max_stream_duration.grpc_timeout_header_max.seconds == 0
    assert not default.route.max_stream_duration.HasField("max_stream_duration")
    single = route_named(resources, "agent/planner", "default")
    assert single.route.cluster == "agent/planner/v1"


def test_header_matchers_and_sticky_sessions() -> None:
    spec = {
        "target": "writer",
        "sticky": {"header": "x-session"},
        "version_header": None,
        "routes": [
            {
                "name": "tenants",
                "match": [
                    {"headers": [{"name": "x-tenant", "prefix": "acme-"}, {"name": "x-debug", "present": True}]},
                    {"headers": [{"name": "x-tenant", "regex": "^beta-[0-9]+$", "invert": True}]},
                ],
                "split": [{"version": "v1", "weight": 30}, {"version": "v2", "weight": 70}],
                "timeout": "1500ms",
            }
        ],
    }
    resources = translate([policy("TrafficPolicy", spec, name="w")], example_mesh())
    first, second, default = routes_of(resources, "agent/writer")
    assert (first.name, second.name, default.name) == ("w/tenants", "w/tenants", "default")
    assert [(h.name, h.string_match.prefix, h.present_match) for h in first.match.headers] == [
        ("x-tenant", "acme-", False),
        ("x-debug", "", True),
    ]
    assert second.match.headers[0].string_match.safe_regex.regex == "^beta-[0-9]+$"
    assert second.match.headers[0].invert_match
    assert weights(first) == {"agent/writer/v1": 30, "agent/writer/v2": 70}
    assert first.route.weighted_clusters.use_hash_policy.value
    assert [h.header.header_name for h in first.route.hash_policy] == ["x-session"]
    assert (first.route.timeout.seconds, first.route.timeout.nanos) == (1, 500_000_000)
    assert [h.header.header_name for h in default.route.hash_policy] == ["x-session"]


def test_unregistered_split_versions_are_dropped_with_a_note() -> None:
    spec = {"target": "writer", "split": [{"version": "v1", "weight": 80}, {"version": "v9", "weight": 20}]}
    resources = translate([policy("TrafficPolicy", spec, name="w")], example_mesh())
    assert weights(route_named(resources, "agent/writer", "default")) == {"agent/writer/v1": 100}
    assert resources.notes == ("agent/writer: spec.split: version v9 is not registered; its share goes to the rest",)
    spec = {"target": "writer", "split": [{"version": "v9", "weight": 100}]}
    resources = translate([policy("TrafficPolicy", spec, name="w")], example_mesh())
    assert weights(route_named(resources, "agent/writer", "default")) == {"agent/writer/v1": 1, "agent/writer/v2": 1}
    assert resources.notes[-1] == (
        "agent/writer: spec.split: no registered entry of the split has weight; using the default split"
    )


def test_service_routes_default_to_all_implementations(resources: Resources) -> None:
    config = resources.routes[f"service/{RESEARCH}"]
    assert list(config.virtual_hosts[0].domains) == [RESEARCH, f"{RESEARCH}:*"]
    (route,) = config.virtual_hosts[0].routes
    assert (route.name, route.match.prefix, route.route.cluster) == ("default", "/", f"service/{RESEARCH}")


def test_service_split_across_agents_divides_an_agents_share_over_its_versions() -> None:
    spec = {
        "target": RESEARCH,
        "split": [{"agent": "researcher", "weight": 60}, {"agent": "writer", "weight": 40}],
        "retries": {"attempts": 3},
        "routes": [
            {
                "name": "pinned",
                "match": [{"method": SEARCH}],
                "split": [{"agent": "writer", "version": "v2", "weight": 100}],
            }
        ],
    }
    resources = translate([policy("TrafficPolicy", spec, name="s")], example_mesh())
    names = [r.name for r in routes_of(resources, f"service/{RESEARCH}")]
    assert names == ["s/pinned", "default/no-retry/research.v1.Researcher/Summon", "default"]
    assert weights(route_named(resources, f"service/{RESEARCH}", "s/pinned")) == {"agent/writer/v2": 100}
    # An agent's share is split over its versions with instances, healthy or not (health is the balancer's job).
    assert weights(route_named(resources, f"service/{RESEARCH}", "default")) == {
        "agent/researcher/v1": 60,
        "agent/researcher/v2": 60,
        "agent/writer/v1": 40,
        "agent/writer/v2": 40,
    }
    assert route_named(resources, f"service/{RESEARCH}", "s/pinned").route.retry_policy.num_retries.value == 3
    assert consistency_problems(resources) == []


# --- listeners ----------------------------------------------------------------------------------------------------


def test_proxyless_listeners_use_rds_over_ads_and_the_router(resources: Resources) -> None:
    for name, route_config in (("researcher", "agent/researcher"), (WRITER, f"service/{WRITER}")):
        listener = resources.listeners[name]
        manager = hcm.HttpConnectionManager()
        assert listener.api_listener.api_listener.Unpack(manager)
        assert manager.rds.route_config_name == route_config
        assert manager.rds.config_source.HasField("ads")
        assert [f.name for f in manager.http_filters] == ["envoy.filters.http.router"]


def test_inbound_listener_rbac_deny_wins_then_allow(resources: Resources) -> None:
    listener = resources.listeners["inbound/researcher"]
    assert (listener.address.socket_address.address, listener.address.socket_address.port_value) == ("0.0.0.0", 7001)
    manager = inbound_manager(resources, "researcher")
    assert [f.name for f in manager.http_filters] == [
        "agentmesh.access.deny",
        "agentmesh.access.allow",
        "envoy.filters.http.router",
    ]
    rules = rbac_rules(manager)
    deny = rules["agentmesh.access.deny"]
    assert deny.action == rbac_config.RBAC.DENY
    assert list(deny.policies) == ["researcher-access/writer-denied"]
    writer = deny.policies["researcher-access/writer-denied"]
    assert list(writer.principals) == [agent_principal("writer")]  # its certificate (tests in test_rbac.py)
    assert [p.any for p in writer.permissions] == [True]
    allow = rules["agentmesh.access.allow"]
    assert allow.action == rbac_config.RBAC.ALLOW
    assert sorted(allow.policies) == ["builtin/grpc-health", "researcher-access/planner-may-search"]
    planner = allow.policies["researcher-access/planner-may-search"]
    assert [p.url_path.path.exact for p in planner.permissions] == ["/research.v1.Researcher/Search"]
    assert list(planner.principals) == [agent_principal("planner")]
    assert allow.policies["builtin/grpc-health"].permissions[0].url_path.path.prefix == "/grpc.health.v1.Health/"
    (host,) = manager.route_config.virtual_hosts
    (route,) = host.routes
    assert route.HasField("non_forwarding_action") and route.match.prefix == "/"
    assert [(h.header.key, h.header.value) for h in host.request_headers_to_add] == [
        ("x-agentmesh-config-max-sources", "5"),
        ("x-agentmesh-config-model", "small-model"),
    ]
    assert {h.append_action for h in host.request_headers_to_add} == {
        host.request_headers_to_add[0].OVERWRITE_IF_EXISTS_OR_ADD
    }


def test_inbound_listener_without_policies_is_open(resources: Resources) -> None:
    manager = inbound_manager(resources, "writer")
    assert [f.name for f in manager.http_filters] == ["envoy.filters.http.router"]
    assert list(manager.route_config.virtual_hosts[0].request_headers_to_add) == []
    # writer instances listen on one shared port; researcher's differ per host but share 7001 too.
    assert resources.listeners["inbound/writer"].address.socket_address.port_value == 7004


def test_default_allow_needs_only_the_deny_filter_and_teams_services_stars() -> None:
    spec = {
        "target": "researcher",
        "default_action": "allow",
        "rules": [
            {"name": "no-writing-team", "action": "deny", "from": {"teams": ["writing"], "agents": ["editor"]}},
            {"action": "deny", "from": {"agents": ["*"]}, "to": {"services": [RESEARCH], "methods": [f"{RESEARCH}/*"]}},
        ],
    }
    resources = translate([policy("AccessPolicy", spec)], example_mesh(research_port=7009))
    manager = inbound_manager(resources, "researcher")
    assert [f.name for f in manager.http_filters] == ["agentmesh.access.deny", "envoy.filters.http.router"]
    deny = rbac_rules(manager)["agentmesh.access.deny"]
    assert sorted(deny.policies) == ["p/no-writing-team", "p/rule-1"]
    team = deny.policies["p/no-writing-team"]
    assert list(team.principals) == [agent_principal("editor"), team_principal("writing")]
    anyone = deny.policies["p/rule-1"]
    assert [p.any for p in anyone.principals] == [True]
    assert [p.url_path.path.prefix for p in anyone.permissions] == [f"/{RESEARCH}/", f"/{RESEARCH}/"]
    # Instances on different ports: the listener takes the default inbound port.
    assert resources.listeners["inbound/researcher"].address.socket_address.port_value == 15006


def test_default_deny_without_rules_allows_only_health() -> None:
    resources = translate([policy("AccessPolicy", {"target": "planner"})], example_mesh())
    rules = rbac_rules(inbound_manager(resources, "planner"))
    assert list(rules) == ["agentmesh.access.allow"]
    assert list(rules["agentmesh.access.allow"].policies) == ["builtin/grpc-health"]


# --- notes --------------------------------------------------------------------------------------------------------


def test_policies_for_unregistered_targets_wait() -> None:
    policies = [
        policy("TrafficPolicy", {"target": "translator"}, name="t"),
        policy("AccessPolicy", {"target": "translator"}, name="a"),
        policy("TrafficPolicy", {"target": "translate.v1.Translator"}, name="s"),
    ]
    resources = translate(policies, example_mesh())
    assert "translator" not in resources.listeners
    assert sorted(resources.notes) == [
        "AccessPolicy/a waits: translator is not registered",
        "TrafficPolicy/s waits: translate.v1.Translator is not registered",
        "TrafficPolicy/t waits: translator is not registered",
    ]


def test_two_policies_for_one_target_first_by_name_wins() -> None:
    policies = [
        policy("TrafficPolicy", {"target": "planner", "timeout": "9s"}, name="b"),
        policy("TrafficPolicy", {"target": "planner", "timeout": "3s"}, name="a"),
    ]
    resources = translate(policies, example_mesh())
    assert route_named(resources, "agent/planner", "default").route.timeout.seconds == 3
    assert resources.notes == ("TrafficPolicy/b ignored: TrafficPolicy/a already targets planner",)


def test_empty_mesh_translates_to_nothing() -> None:
    resources = translate(example_policies(), MeshView())
    assert list(resources) == []
    assert len(resources.notes) == 3
