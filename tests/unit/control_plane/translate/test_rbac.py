"""Access translation: principals are SPIFFE IDs of the mesh's trust domain; mesh-wide and per-agent policies combine.

Each published config is also compiled and run by the sidecar's RBAC engine,
so the tests show what a caller with a given certificate is allowed to do.
"""

from __future__ import annotations

from typing import Any

import pytest
from envoy.config.rbac.v3 import rbac_pb2 as rbac_config
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as rbac_filter
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm

from control_plane.policy.model import AccessPolicy
from control_plane.translate import Resources, translate
from control_plane.translate.rbac import (
    ALLOW_FILTER,
    DENY_FILTER,
    HEALTH_POLICY,
    AgentAccess,
    agent_principal,
    rbac_filters,
    team_principal,
)
from sidecar.errors import AccessDenied
from sidecar.filters.rbac import DEFAULT_DENY, Decision, RbacConfig, RbacFilter
from tests.unit.control_plane.translate.meshes import SEARCH, example_mesh

SEARCH_PATH = f"/{SEARCH}"
PLAN_PATH = "/planning.v1.Planner/Plan"
HEALTH_PATH = "/grpc.health.v1.Health/Check"


def spiffe(agent: str, team: str, trust_domain: str = "agentmesh.local") -> str:
    return f"spiffe://{trust_domain}/team/{team}/agent/{agent}"


PLANNER = spiffe("planner", "planning")
WRITER = spiffe("writer", "writing")
EDITOR = spiffe("editor", "writing")
AUDITOR = spiffe("auditor", "security")


def access_policy(name: str, target: str, *rules: dict[str, Any], default: str | None = None) -> AccessPolicy:
    spec: dict[str, Any] = {"target": target, "rules": list(rules)}
    if default is not None:
        spec["default_action"] = default
    return AccessPolicy.model_validate({"metadata": {"name": name}, "spec": spec})


def engine(access: AgentAccess | None, trust_domain: str = "agentmesh.local") -> RbacFilter | None:
    """What a sidecar enforces for `access`: the filters compiled as decode/ does."""
    configs = []
    for http_filter in rbac_filters(access, trust_domain=trust_domain):
        message = rbac_filter.RBAC()
        http_filter.typed_config.Unpack(message)
        configs.append(RbacConfig.from_proto(message, name=http_filter.name))
    return RbacFilter.build(configs)


def inbound_engine(resources: Resources, agent: str) -> RbacFilter | None:
    manager = hcm.HttpConnectionManager()
    resources.listeners[f"inbound/{agent}"].filter_chains[0].filters[0].typed_config.Unpack(manager)
    configs = []
    for http_filter in manager.http_filters:
        if http_filter.typed_config.Is(rbac_filter.RBAC.DESCRIPTOR):
            message = rbac_filter.RBAC()
            http_filter.typed_config.Unpack(message)
            configs.append(RbacConfig.from_proto(message, name=http_filter.name))
    return RbacFilter.build(configs)


def decide(chain: RbacFilter | None, path: str, peer: str | None, headers: dict[str, str] | None = None) -> Decision:
    return Decision(True) if chain is None else chain.evaluate(path, headers or {}, peer)


# --- principals ---------------------------------------------------------------------------------------------------


def test_an_agent_is_its_name_in_any_team_of_the_trust_domain() -> None:
    principal = agent_principal("planner", "prod.example.com")
    in_domain, named = principal.and_ids.ids
    assert in_domain.authenticated.principal_name.prefix == "spiffe://prod.example.com/team/"
    assert named.authenticated.principal_name.suffix == "/agent/planner"
    allow = engine(
        AgentAccess(own=access_policy("a", "researcher", {"action": "allow", "from": {"agents": ["planner"]}})),
        "prod.example.com",
    )
    assert decide(allow, SEARCH_PATH, spiffe("planner", "planning", "prod.example.com")).allowed
    assert decide(allow, SEARCH_PATH, spiffe("planner", "other-team", "prod.example.com")).allowed
    for stranger in (
        spiffe("planner", "planning"),  # the default trust domain is another mesh here
        spiffe("planner", "planning", "prodXexample.com"),
        spiffe("planner-2", "planning", "prod.example.com"),
        spiffe("planner", "planning", "prod.example.com") + "/more",
        "spiffe://prod.example.com/agent/planner",
        "planner.planning.prod.example.com",
        None,
    ):
        assert not decide(allow, SEARCH_PATH, stranger).allowed, stranger


def test_a_team_is_every_agent_of_it_in_the_trust_domain() -> None:
    assert team_principal("writing").authenticated.principal_name.prefix == "spiffe://agentmesh.local/team/writing/"
    allow = engine(
        AgentAccess(own=access_policy("a", "researcher", {"action": "allow", "from": {"teams": ["writing"]}}))
    )
    assert decide(allow, SEARCH_PATH, WRITER).allowed and decide(allow, SEARCH_PATH, EDITOR).allowed
    assert not decide(allow, SEARCH_PATH, spiffe("writer", "writing-2")).allowed
    assert not decide(allow, SEARCH_PATH, spiffe("writer", "writing", "other.local")).allowed
    assert not decide(allow, SEARCH_PATH, None).allowed


@pytest.mark.parametrize("peers", [{"agents": ["*"]}, {"teams": ["*"]}, None])
def test_star_and_no_from_mean_any_caller_with_or_without_a_certificate(peers: dict[str, Any] | None) -> None:
    rule: dict[str, Any] = {"action": "allow"} if peers is None else {"action": "allow", "from": peers}
    published = rbac_filters(AgentAccess(own=access_policy("a", "researcher", rule)))
    (allow,) = published
    rules = rbac_filter.RBAC()
    allow.typed_config.Unpack(rules)
    assert [p.any for p in rules.rules.policies["a/rule-0"].principals] == [True]
    chain = engine(AgentAccess(own=access_policy("a", "researcher", rule)))
    assert decide(chain, SEARCH_PATH, PLANNER).allowed and decide(chain, SEARCH_PATH, None).allowed


def leaf_kinds(principal: rbac_config.Principal) -> set[str]:
    kind = principal.WhichOneof("identifier")
    if kind in ("and_ids", "or_ids"):
        return {k for p in getattr(principal, kind).ids for k in leaf_kinds(p)}
    return {str(kind)}


def test_no_principal_reads_a_header() -> None:
    everything = AgentAccess(
        own=access_policy(
            "a",
            "researcher",
            {"name": "in", "action": "allow", "from": {"agents": ["planner"], "teams": ["planning"]}},
            {"name": "out", "action": "deny", "from": {"agents": ["writer"], "teams": ["writing"]}},
        )
    )
    for http_filter in rbac_filters(everything):
        rules = rbac_filter.RBAC()
        http_filter.typed_config.Unpack(rules)
        for name, policy in rules.rules.policies.items():
            for principal in policy.principals:
                assert leaf_kinds(principal) <= {"authenticated", "any"}, name
    chain = engine(everything)
    claims = {"x-agentmesh-source-agent": "planner", "x-agentmesh-source-team": "planning"}
    assert decide(chain, SEARCH_PATH, None, claims) == Decision(False, None)
    assert decide(chain, SEARCH_PATH, WRITER, claims) == Decision(False, "a/out")


# --- the mesh-wide policy -----------------------------------------------------------------------------------------

MESH = access_policy(
    "mesh-default",
    "*",
    {"name": "no-auditor", "action": "deny", "from": {"agents": ["auditor"]}},
    {
        "name": "health-team",
        "action": "allow",
        "from": {"teams": ["planning"]},
        "to": {"services": ["planning.v1.Planner"]},
    },
    default="deny",
)


def test_mesh_wide_policy_alone_applies_its_rules_and_default() -> None:
    chain = engine(AgentAccess(mesh_wide=MESH))
    assert decide(chain, PLAN_PATH, PLANNER) == Decision(True, "mesh-default/health-team")
    assert decide(chain, SEARCH_PATH, PLANNER) == Decision(False, None)
    assert decide(chain, PLAN_PATH, AUDITOR) == Decision(False, "mesh-default/no-auditor")
    assert decide(chain, HEALTH_PATH, None) == Decision(True, HEALTH_POLICY)


def test_own_policy_adds_rules_and_deny_rules_of_both_apply() -> None:
    own = access_policy(
        "researcher-access",
        "researcher",
        {"name": "planner-may-search", "action": "allow", "from": {"agents": ["planner", "auditor"]}},
        {"name": "writer-denied", "action": "deny", "from": {"agents": ["writer"]}},
    )
    access = AgentAccess(own=own, mesh_wide=MESH)
    assert access.default_action == "deny"
    chain = engine(access)
    assert decide(chain, SEARCH_PATH, PLANNER) == Decision(True, "researcher-access/planner-may-search")
    # The agent's own allow rule does not undo the mesh's deny rule.
    assert decide(chain, SEARCH_PATH, AUDITOR) == Decision(False, "mesh-default/no-auditor")
    assert decide(chain, SEARCH_PATH, WRITER) == Decision(False, "researcher-access/writer-denied")
    assert decide(chain, PLAN_PATH, PLANNER).allowed  # the mesh's allow rules apply too
    assert decide(chain, SEARCH_PATH, EDITOR) == Decision(False, None)


@pytest.mark.parametrize(
    ("own_default", "mesh_default", "effective"),
    [
        (None, None, "deny"),
        (None, "allow", "allow"),
        (None, "deny", "deny"),
        ("allow", "deny", "allow"),
        ("deny", "allow", "deny"),
    ],
)
def test_the_agents_own_default_wins_when_it_has_one(
    own_default: str | None, mesh_default: str | None, effective: str
) -> None:
    access = AgentAccess(
        own=access_policy("own", "researcher", default=own_default),
        mesh_wide=access_policy("mesh", "*", {"action": "deny", "from": {"agents": ["auditor"]}}, default=mesh_default),
    )
    assert access.default_action == effective
    names = [f.name for f in rbac_filters(access)]
    assert names == ([DENY_FILTER, ALLOW_FILTER] if effective == "deny" else [DENY_FILTER])
    chain = engine(access)
    assert decide(chain, SEARCH_PATH, EDITOR).allowed is (effective == "allow")
    assert decide(chain, SEARCH_PATH, AUDITOR) == Decision(False, "mesh/rule-0")


def test_no_policy_means_no_filter() -> None:
    assert AgentAccess.of(None, None) is None
    assert rbac_filters(None) == []


def test_translation_gives_every_agent_the_mesh_wide_policy_in_the_trust_domain() -> None:
    own = access_policy(
        "researcher-access", "researcher", {"name": "planner", "action": "allow", "from": {"agents": ["planner"]}}
    )
    resources = translate([MESH, own], example_mesh(), trust_domain="prod.example.com")
    assert not [note for note in resources.notes if "mesh-default" in note]  # '*' never "waits" for an agent
    planner = spiffe("planner", "planning", "prod.example.com")
    for agent in ("planner", "writer"):
        chain = inbound_engine(resources, agent)
        assert decide(chain, PLAN_PATH, planner).allowed
        assert decide(chain, SEARCH_PATH, planner) == Decision(False, None)
        assert decide(chain, PLAN_PATH, PLANNER) == Decision(False, None)  # the default trust domain is foreign
    researcher = inbound_engine(resources, "researcher")
    assert decide(researcher, SEARCH_PATH, planner) == Decision(True, "researcher-access/planner")
    assert decide(researcher, SEARCH_PATH, spiffe("auditor", "x", "prod.example.com")).policy == (
        "mesh-default/no-auditor"
    )


def test_default_deny_reports_no_policy() -> None:
    chain = engine(AgentAccess(own=access_policy("a", "researcher")))
    assert chain is not None
    assert chain.evaluate(SEARCH_PATH, {}, PLANNER) == Decision(False, None)
    with pytest.raises(AccessDenied) as caught:
        chain.check(SEARCH_PATH, {}, PLANNER)
    assert caught.value.policy == DEFAULT_DENY
    assert PLANNER in str(caught.value)


def test_rule_names_are_prefixed_with_their_policy() -> None:
    access = AgentAccess(
        own=access_policy("own", "researcher", {"action": "deny", "from": {"agents": ["writer"]}}),
        mesh_wide=access_policy("mesh", "*", {"action": "deny", "from": {"agents": ["writer"]}}),
    )
    assert [name for name, _ in access.named_rules()] == ["mesh/rule-0", "own/rule-0"]
    (deny,) = rbac_filters(access, trust_domain="agentmesh.local")[:1]
    rules = rbac_filter.RBAC()
    deny.typed_config.Unpack(rules)
    assert rules.rules.action == rbac_config.RBAC.DENY
    assert sorted(rules.rules.policies) == ["mesh/rule-0", "own/rule-0"]
