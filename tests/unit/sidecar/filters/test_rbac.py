"""RBAC: compiling envoy.filters.http.rbac configs and deciding as Envoy does."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from envoy.config.rbac.v3 import rbac_pb2 as rbac_config
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as rbac_filter
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm
from envoy.type.matcher.v3 import path_pb2, regex_pb2, string_pb2
from google.api.expr.v1alpha1 import syntax_pb2

from control_plane.translate import translate
from sidecar.errors import AccessDenied
from sidecar.filters.rbac import DEFAULT_DENY, Decision, RbacConfig, RbacFilter
from tests.unit.control_plane.translate.meshes import SEARCH, example_mesh, example_policies

Principal = rbac_config.Principal
Permission = rbac_config.Permission
SM = string_pb2.StringMatcher
AGENT = "x-agentmesh-source-agent"
TEAM = "x-agentmesh-source-team"
SEARCH_PATH = f"/{SEARCH}"
HEALTH_PATH = "/grpc.health.v1.Health/Check"


# The example AccessPolicy, compiled from what the control plane publishes


@pytest.fixture(scope="module")
def researcher_filter() -> RbacFilter:
    resources = translate(example_policies(), example_mesh())
    listener = resources.listeners["inbound/researcher"]
    manager = hcm.HttpConnectionManager()
    listener.filter_chains[0].filters[0].typed_config.Unpack(manager)
    configs = []
    for http_filter in manager.http_filters:
        if http_filter.typed_config.Is(rbac_filter.RBAC.DESCRIPTOR):
            message = rbac_filter.RBAC()
            http_filter.typed_config.Unpack(message)
            configs.append(RbacConfig.from_proto(message, name=http_filter.name))
    assert [c.action for c in configs] == ["DENY", "ALLOW"]
    built = RbacFilter.build(configs)
    assert built is not None
    return built


def spiffe(agent: str, team: str, trust_domain: str = "agentmesh.local") -> str:
    return f"spiffe://{trust_domain}/team/{team}/agent/{agent}"


PLANNER = spiffe("planner", "planning")
WRITER = spiffe("writer", "writing")


def test_planner_may_search(researcher_filter: RbacFilter) -> None:
    decision = researcher_filter.check(SEARCH_PATH, {}, PLANNER)
    assert decision == Decision(True, "researcher-access/planner-may-search")
    # The team is not part of the rule: the planner of any team is the planner.
    assert researcher_filter.check(SEARCH_PATH, {}, spiffe("planner", "other")).allowed


def test_planner_may_not_call_other_methods(researcher_filter: RbacFilter) -> None:
    with pytest.raises(AccessDenied) as caught:
        researcher_filter.check("/research.v1.Researcher/Summon", {}, PLANNER)
    assert caught.value.policy == DEFAULT_DENY


def test_writer_is_denied_by_its_rule(researcher_filter: RbacFilter) -> None:
    with pytest.raises(AccessDenied) as caught:
        researcher_filter.check(SEARCH_PATH, {}, WRITER)
    denied = caught.value
    assert denied.policy == "researcher-access/writer-denied"
    assert denied.code == grpc.StatusCode.PERMISSION_DENIED
    assert denied.reason == "access_denied"
    assert WRITER in denied.message and SEARCH_PATH in denied.message and "writer-denied" in denied.message


def test_unknown_callers_are_denied_by_default(researcher_filter: RbacFilter) -> None:
    for peer in (spiffe("stranger", "planning"), None):
        with pytest.raises(AccessDenied) as caught:
            researcher_filter.check(SEARCH_PATH, {}, peer)
        assert caught.value.policy == DEFAULT_DENY
    assert "an unauthenticated caller" in caught.value.message


@pytest.mark.parametrize(
    "peer",
    [
        None,  # plaintext (permissive mode)
        spiffe("planner", "planning", trust_domain="evil.example"),  # another trust domain
        "spiffe://agentmesh.local/team/planning/agent/planner/x",  # longer path
        "spiffe://agentmesh.local/team/planning/agent/planner2",  # a name sharing the prefix
        "spiffe://agentmesh.local/agent/planner",  # no team
        "spiffe://agentmeshXlocal/team/planning/agent/planner",  # the dot is not a wildcard
        "planner.planning.agentmesh.local",  # the DNS SAN is not a principal
    ],
)
def test_identity_headers_and_near_miss_identities_never_pass(researcher_filter: RbacFilter, peer: str | None) -> None:
    claims = {AGENT: "planner", TEAM: "planning"}
    with pytest.raises(AccessDenied) as caught:
        researcher_filter.check(SEARCH_PATH, claims, peer)
    assert caught.value.policy == DEFAULT_DENY


def test_health_checks_are_always_allowed(researcher_filter: RbacFilter) -> None:
    for peer in (None, PLANNER, spiffe("stranger", "x")):
        assert researcher_filter.check(HEALTH_PATH, {}, peer) == Decision(True, "builtin/grpc-health")


def test_an_agent_without_access_policy_has_no_filter() -> None:
    resources = translate(example_policies(), example_mesh())
    manager = hcm.HttpConnectionManager()
    resources.listeners["inbound/planner"].filter_chains[0].filters[0].typed_config.Unpack(manager)
    assert not [f for f in manager.http_filters if f.typed_config.Is(rbac_filter.RBAC.DESCRIPTOR)]
    assert RbacFilter.build([]) is None


# Engine semantics


def header(name: str, **match: object) -> Any:
    return Principal(header=rc.HeaderMatcher(name=name, **match))


def agent_is(value: str) -> Any:
    return header(AGENT, string_match=SM(exact=value))


def path_is(**match: object) -> Any:
    return Permission(url_path=path_pb2.PathMatcher(path=SM(**match)))


ANY_PERMISSION = Permission(any=True)
ANY_PRINCIPAL = Principal(any=True)


def config(
    action: int = rbac_config.RBAC.ALLOW,
    *,
    permissions: list[Any] | None = None,
    principals: list[Any] | None = None,
    policies: dict[str, Any] | None = None,
) -> RbacConfig:
    if policies is None:
        policies = {
            "p": rbac_config.Policy(
                permissions=permissions or [ANY_PERMISSION], principals=principals or [ANY_PRINCIPAL]
            )
        }
    return RbacConfig.from_proto(rbac_filter.RBAC(rules=rbac_config.RBAC(action=action, policies=policies)))


def allowed(
    cfg: RbacConfig, path: str = SEARCH_PATH, headers: dict[str, str] | None = None, peer: str | None = None
) -> bool:
    return cfg.evaluate(path, headers or {}, peer).allowed


def test_no_rules_lets_everything_through() -> None:
    cfg = RbacConfig.from_proto(rbac_filter.RBAC())
    assert cfg.evaluate(SEARCH_PATH, {}) == Decision(True, None)
    assert not cfg.enforcing
    assert RbacFilter.build([cfg]) is None


def test_shadow_rules_never_decide() -> None:
    deny_all = rbac_config.RBAC(
        action=rbac_config.RBAC.DENY,
        policies={"all": rbac_config.Policy(permissions=[ANY_PERMISSION], principals=[ANY_PRINCIPAL])},
    )
    cfg = RbacConfig.from_proto(rbac_filter.RBAC(shadow_rules=deny_all))
    assert allowed(cfg)


def test_allow_without_policies_denies_everything() -> None:
    cfg = config(rbac_config.RBAC.ALLOW, policies={})
    assert cfg.evaluate(SEARCH_PATH, {}) == Decision(False, None)
    assert cfg.enforcing


def test_deny_without_policies_allows_everything() -> None:
    cfg = config(rbac_config.RBAC.DENY, policies={})
    assert allowed(cfg)
    assert not cfg.enforcing


def test_deny_action_denies_what_matches() -> None:
    cfg = config(rbac_config.RBAC.DENY, principals=[agent_is("writer")])
    assert cfg.evaluate(SEARCH_PATH, {AGENT: "writer"}) == Decision(False, "p")
    assert cfg.evaluate(SEARCH_PATH, {AGENT: "planner"}) == Decision(True, None)


def test_log_action_allows_and_reports() -> None:
    cfg = config(rbac_config.RBAC.LOG, principals=[agent_is("writer")])
    assert cfg.evaluate(SEARCH_PATH, {AGENT: "writer"}) == Decision(True, "p")
    assert not cfg.enforcing


def test_first_matching_policy_by_name_is_reported() -> None:
    everyone = rbac_config.Policy(permissions=[ANY_PERMISSION], principals=[ANY_PRINCIPAL])
    cfg = config(policies={"zeta": everyone, "alpha": everyone, "mid": everyone})
    assert cfg.evaluate(SEARCH_PATH, {}).policy == "alpha"
    assert [p.name for p in cfg.policies] == ["alpha", "mid", "zeta"]


def test_policy_needs_a_permission_and_a_principal_to_match() -> None:
    cfg = config(permissions=[path_is(exact=SEARCH_PATH)], principals=[agent_is("planner"), agent_is("auditor")])
    assert allowed(cfg, SEARCH_PATH, {AGENT: "auditor"})
    assert not allowed(cfg, "/x.v1.X/Y", {AGENT: "auditor"})
    assert not allowed(cfg, SEARCH_PATH, {AGENT: "writer"})


@pytest.mark.parametrize(
    ("match", "value", "expected"),
    [
        ({"exact": "planner"}, "planner", True),
        ({"exact": "planner"}, "Planner", False),
        ({"exact": "planner", "ignore_case": True}, "PLANNER", True),
        ({"prefix": "plan"}, "planner", True),
        ({"prefix": "PLAN", "ignore_case": True}, "planner", True),
        ({"suffix": "ner"}, "planner", True),
        ({"suffix": "ner"}, "writer", False),
        ({"contains": "lann"}, "planner", True),
        ({"safe_regex": regex_pb2.RegexMatcher(regex="pl.*r")}, "planner", True),
        ({"safe_regex": regex_pb2.RegexMatcher(regex="pl.*")}, "xplanner", False),  # a full match
    ],
)
def test_header_string_matchers(match: dict[str, object], value: str, expected: bool) -> None:
    cfg = config(principals=[header(AGENT, string_match=SM(**match))])
    assert allowed(cfg, headers={AGENT: value}) is expected


def test_header_present_invert_and_missing() -> None:
    present = config(principals=[header(AGENT, present_match=True)])
    assert allowed(present, headers={AGENT: ""})
    assert not allowed(present, headers={})
    absent = config(principals=[header(AGENT, present_match=False)])
    assert allowed(absent, headers={}) and not allowed(absent, headers={AGENT: "x"})
    inverted_present = config(principals=[header(AGENT, present_match=True, invert_match=True)])
    assert allowed(inverted_present, headers={})

    not_writer = config(principals=[header(AGENT, string_match=SM(exact="writer"), invert_match=True)])
    assert allowed(not_writer, headers={AGENT: "planner"})
    assert not allowed(not_writer, headers={AGENT: "writer"})
    # An absent header never matches a value matcher, inverted or not (Envoy).
    assert not allowed(not_writer, headers={})
    empty_ok = config(
        principals=[
            header(AGENT, string_match=SM(exact="writer"), invert_match=True, treat_missing_header_as_empty=True)
        ]
    )
    assert allowed(empty_ok, headers={})

    bare = config(principals=[header(AGENT)])  # no value: a presence test
    assert allowed(bare, headers={AGENT: "x"}) and not allowed(bare, headers={})


def test_deprecated_header_match_fields() -> None:
    assert allowed(config(principals=[header(AGENT, exact_match="planner")]), headers={AGENT: "planner"})
    assert allowed(config(principals=[header(AGENT, prefix_match="pla")]), headers={AGENT: "planner"})
    assert allowed(config(principals=[header(AGENT, suffix_match="ner")]), headers={AGENT: "planner"})
    assert allowed(config(principals=[header(AGENT, contains_match="ann")]), headers={AGENT: "planner"})
    regex = header(AGENT, safe_regex_match=regex_pb2.RegexMatcher(regex="p.*"))
    assert allowed(config(principals=[regex]), headers={AGENT: "planner"})
    assert allowed(config(principals=[header(AGENT, exact_match="")]), headers={AGENT: "anything"})


def test_header_names_are_matched_lower_case() -> None:
    cfg = config(principals=[header("X-AgentMesh-Source-Agent", string_match=SM(exact="planner"))])
    assert allowed(cfg, headers={AGENT: "planner"})


def test_principal_sets() -> None:
    planner_in_planning = Principal(
        and_ids=rbac_config.Principal.Set(ids=[agent_is("planner"), header(TEAM, string_match=SM(exact="planning"))])
    )
    cfg = config(principals=[planner_in_planning])
    assert allowed(cfg, headers={AGENT: "planner", TEAM: "planning"})
    assert not allowed(cfg, headers={AGENT: "planner", TEAM: "other"})
    either = config(principals=[Principal(or_ids=rbac_config.Principal.Set(ids=[agent_is("a"), agent_is("b")]))])
    assert allowed(either, headers={AGENT: "b"}) and not allowed(either, headers={AGENT: "c"})
    anyone_but_writer = config(principals=[Principal(not_id=agent_is("writer"))])
    assert allowed(anyone_but_writer, headers={AGENT: "planner"})
    assert allowed(anyone_but_writer, headers={})
    assert not allowed(anyone_but_writer, headers={AGENT: "writer"})


def test_authenticated_principal_matches_the_peer_identity() -> None:
    spiffe = "spiffe://agentmesh/agent/planner"
    named = config(principals=[Principal(authenticated=Principal.Authenticated(principal_name=SM(exact=spiffe)))])
    assert allowed(named, peer=spiffe)
    assert not allowed(named, peer="spiffe://agentmesh/agent/writer")
    assert not allowed(named, peer=None)
    anyone_authenticated = config(principals=[Principal(authenticated=Principal.Authenticated())])
    assert allowed(anyone_authenticated, peer="spiffe://x") and not allowed(anyone_authenticated, peer=None)


def test_url_path_principal() -> None:
    cfg = config(principals=[Principal(url_path=path_pb2.PathMatcher(path=SM(prefix="/grpc.health.v1.")))])
    assert allowed(cfg, HEALTH_PATH) and not allowed(cfg, SEARCH_PATH)


def test_path_permissions() -> None:
    exact = config(permissions=[path_is(exact=SEARCH_PATH)])
    assert allowed(exact, SEARCH_PATH)
    assert allowed(exact, SEARCH_PATH + "?trace=1")  # url_path ignores the query
    assert not allowed(exact, SEARCH_PATH + "X")
    service = config(permissions=[path_is(prefix="/research.v1.Researcher/")])
    assert allowed(service, "/research.v1.Researcher/Summon") and not allowed(service, "/writing.v1.Writer/Draft")
    regex = config(permissions=[path_is(safe_regex=regex_pb2.RegexMatcher(regex=r"/research\.v1\.Researcher/S\w+"))])
    assert allowed(regex, SEARCH_PATH) and not allowed(regex, "/research.v1.Researcher/search-all")


def test_path_pseudo_header_permission() -> None:
    cfg = config(permissions=[Permission(header=rc.HeaderMatcher(name=":path", string_match=SM(exact=SEARCH_PATH)))])
    assert allowed(cfg, SEARCH_PATH) and not allowed(cfg, HEALTH_PATH)


def test_permission_sets() -> None:
    search = path_is(exact=SEARCH_PATH)
    service = path_is(prefix="/research.v1.Researcher/")
    both = config(permissions=[Permission(and_rules=rbac_config.Permission.Set(rules=[search, service]))])
    assert allowed(both, SEARCH_PATH) and not allowed(both, "/research.v1.Researcher/Summon")
    either = config(
        permissions=[Permission(or_rules=rbac_config.Permission.Set(rules=[search, path_is(exact="/a/b")]))]
    )
    assert allowed(either, "/a/b") and not allowed(either, "/a/c")
    but_search = config(permissions=[Permission(not_rule=search)])
    assert allowed(but_search, "/research.v1.Researcher/Summon") and not allowed(but_search, SEARCH_PATH)


# Configs that cannot be enforced as Envoy would are refused, naming the field


def refused(rbac: Any) -> str:
    with pytest.raises(ValueError) as caught:
        RbacConfig.from_proto(rbac)
    return str(caught.value)


def rules(*, permissions: list[Any] | None = None, principals: list[Any] | None = None) -> Any:
    policy = rbac_config.Policy(permissions=permissions or [ANY_PERMISSION], principals=principals or [ANY_PRINCIPAL])
    return rbac_filter.RBAC(rules=rbac_config.RBAC(policies={"p": policy}))


def test_unsupported_principal_is_refused() -> None:
    message = refused(rules(principals=[Principal(source_ip={"address_prefix": "10.0.0.0"})]))
    assert message.startswith("rules.policies['p'].principals[0].source_ip is not supported")
    assert "supported principals: any, header" in message


def test_nested_unsupported_principal_names_its_path() -> None:
    nested = Principal(and_ids=Principal.Set(ids=[ANY_PRINCIPAL, Principal(remote_ip={"address_prefix": "1.2.3.4"})]))
    assert "principals[0].and_ids.ids[1].remote_ip is not supported" in refused(rules(principals=[nested]))


def test_unsupported_permission_is_refused() -> None:
    message = refused(rules(permissions=[Permission(destination_port=15006)]))
    assert "policies['p'].permissions[0].destination_port is not supported" in message


def test_cel_conditions_are_refused() -> None:
    policy = rbac_config.Policy(
        permissions=[ANY_PERMISSION],
        principals=[ANY_PRINCIPAL],
        condition=syntax_pb2.Expr(const_expr=syntax_pb2.Constant(bool_value=True)),
    )
    message = refused(rbac_filter.RBAC(rules=rbac_config.RBAC(policies={"cel": policy})))
    assert "policies['cel'].condition: CEL conditions are not supported" in message


def test_matcher_based_rbac_is_refused() -> None:
    rbac = rbac_filter.RBAC()
    rbac.matcher.SetInParent()
    assert "matcher-based RBAC is not supported" in refused(rbac)


def test_empty_and_invalid_matchers_are_refused() -> None:
    assert "empty principal" in refused(rules(principals=[Principal()]))
    assert "empty permission" in refused(rules(permissions=[Permission()]))
    empty_policy = rbac_filter.RBAC(
        rules=rbac_config.RBAC(policies={"p": rbac_config.Policy(permissions=[ANY_PERMISSION])})
    )
    assert "at least one permission and one principal" in refused(empty_policy)
    bad_regex = path_is(safe_regex=regex_pb2.RegexMatcher(regex="(unclosed"))
    assert "url_path.path.safe_regex: invalid regex" in refused(rules(permissions=[bad_regex]))
    custom = SM(custom={"name": "x"})
    assert "string_match.custom is not supported" in refused(rules(principals=[header(AGENT, string_match=custom)]))
    ranged = header(AGENT, range_match={"start": 1, "end": 2})
    assert "header.range_match is not supported" in refused(rules(principals=[ranged]))
    assert "needs a header name" in refused(rules(principals=[header("", present_match=True)]))
    assert "and_ids.ids: needs at least one" in refused(rules(principals=[Principal(and_ids=Principal.Set())]))
    assert "or_rules.rules: needs at least one" in refused(rules(permissions=[Permission(or_rules=Permission.Set())]))
    assert "StringMatcher needs one of" in refused(rules(permissions=[path_is()]))
    no_path = Permission(url_path=path_pb2.PathMatcher())
    assert "PathMatcher needs `path`" in refused(rules(permissions=[no_path]))


# The filter: several configs in order


def test_filter_denies_if_any_config_denies() -> None:
    deny_writer = config(rbac_config.RBAC.DENY, principals=[agent_is("writer")])
    allow_planner = config(rbac_config.RBAC.ALLOW, principals=[agent_is("planner")])
    chain = RbacFilter.build([deny_writer, allow_planner])
    assert chain is not None
    assert chain.evaluate(SEARCH_PATH, {AGENT: "planner"}) == Decision(True, "p")
    assert chain.evaluate(SEARCH_PATH, {AGENT: "writer"}) == Decision(False, "p")
    assert chain.evaluate(SEARCH_PATH, {AGENT: "other"}) == Decision(False, None)


def test_filter_build_skips_configs_that_cannot_refuse() -> None:
    pass_all = RbacConfig.from_proto(rbac_filter.RBAC())
    allow = config(principals=[agent_is("planner")])
    chain = RbacFilter.build([pass_all, allow])
    assert chain is not None and chain.configs == (allow,)
    with pytest.raises(TypeError, match="expected RbacConfig"):
        RbacFilter.build([object()])


def test_configs_are_frozen_and_comparable() -> None:
    first = config(principals=[agent_is("planner")])
    assert first == config(principals=[agent_is("planner")])
    with pytest.raises(AttributeError):
        first.action = "DENY"  # type: ignore[misc]


# Decisions remembered per (path, peer) when no rule reads headers


def test_a_filter_without_header_rules_remembers_each_path_and_peer_decision() -> None:
    only_planner = config(
        permissions=[path_is(exact=SEARCH_PATH)],
        principals=[Principal(authenticated=Principal.Authenticated(principal_name=SM(exact=PLANNER)))],
    )
    assert not only_planner.reads_headers
    access = RbacFilter.build([only_planner])
    assert access is not None
    for _ in range(3):
        assert access.check(SEARCH_PATH, {}, PLANNER) == Decision(True, "p")
        with pytest.raises(AccessDenied, match="policy default-deny"):
            access.check(SEARCH_PATH, {}, WRITER)
        with pytest.raises(AccessDenied, match=f"{WRITER} may not call {HEALTH_PATH}"):
            access.check(HEALTH_PATH, {}, WRITER)
        with pytest.raises(AccessDenied, match="an unauthenticated caller"):
            access.check(SEARCH_PATH, {}, None)


def test_a_filter_with_header_rules_decides_every_call_afresh() -> None:
    deny_writer_claims = config(rbac_config.RBAC.DENY, principals=[agent_is("writer")])
    assert deny_writer_claims.reads_headers
    access = RbacFilter.build([deny_writer_claims])
    assert access is not None
    assert access.check(SEARCH_PATH, {AGENT: "planner"}, PLANNER).allowed
    with pytest.raises(AccessDenied, match="policy p"):
        access.check(SEARCH_PATH, {AGENT: "writer"}, PLANNER)  # same path and peer, other headers


def test_path_header_rules_read_no_headers() -> None:
    by_path_header = config(permissions=[Permission(header=rc.HeaderMatcher(name=":path", prefix_match="/x."))])
    by_nested_header = config(principals=[Principal(not_id=Principal(or_ids=Principal.Set(ids=[agent_is("a")])))])
    assert not by_path_header.reads_headers
    assert by_nested_header.reads_headers


def test_remembered_decisions_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from sidecar.filters import rbac

    monkeypatch.setattr(rbac, "MAX_REMEMBERED_DECISIONS", 4)
    access = RbacFilter.build([config(permissions=[path_is(prefix="/")])])
    assert access is not None
    for i in range(20):
        assert access.check(f"/p.S/M{i}", {}, None).allowed
    assert len(access._memo or {}) <= 4
