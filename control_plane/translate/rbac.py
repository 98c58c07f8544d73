"""Access: the AccessPolicies an agent enforces, as Envoy RBAC HTTP filters for its inbound listener.

An agent enforces its own AccessPolicy (`target: <agent>`) and the mesh-wide
one (`target: '*'`); `AgentAccess` combines them: the rules of both apply, and
the default is the agent's own `default_action` when it sets one, else the
mesh-wide policy's, else deny.

Deny wins over allow (Envoy RBAC and Istio semantics) with two filters in a row:

1. `agentmesh.access.deny`  (action DENY): every deny rule;
2. `agentmesh.access.allow` (action ALLOW): every allow rule, present only when
   the default is deny; an ALLOW filter refuses whatever no policy matches.

Each rule is the RBAC policy `<AccessPolicy name>/<rule name>`, the name
denials, access logs and `agentmesh_access_denied_total{policy}` show.

Callers are identified by the SPIFFE ID of their certificate,
`spiffe://<trust domain>/team/<team>/agent/<name>`, matched with
`authenticated.principal_name`, which Envoy, gRPC's xDS server and our sidecar
all evaluate on the peer certificate's URI SAN:

- an agent: `and_ids` of the prefix `spiffe://<td>/team/` and the suffix
  `/agent/<name>`, so the agent of any team of this trust domain. Prefix and
  suffix rather than a regex: Envoy refuses regexes whose RE2 program exceeds
  100 instructions, which a long trust domain and agent name would. The CA
  certifies only IDs of the shape above (team and name are DNS labels), and
  the sidecar refuses any other shape before RBAC (sidecar/filters/authn.py),
  so prefix and suffix pin exactly one team segment;
- a team: `prefix` `spiffe://<td>/team/<team>/`;
- `*` (and a rule without `from`): `any`, meaning any caller, with a
  certificate or, on a permissive listener, without one.

No principal reads a header: identity headers a caller sends are claims and
play no part in access decisions. Operations match the gRPC path: a service
is the prefix `/<package.Service>/`, a method the exact
`/<package.Service>/<Method>`. gRPC health checks are always allowed, so
probes keep working under default-deny.
"""

from __future__ import annotations

from dataclasses import dataclass

from envoy.config.rbac.v3 import rbac_pb2 as rbac_config
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as rbac_filter
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm
from envoy.type.matcher.v3 import path_pb2, string_pb2

from agentmesh.identity.spiffe import DEFAULT_TRUST_DOMAIN, SCHEME
from control_plane.policy.model import RESERVED_ACCESS_POLICY_NAME, AccessPolicy, AccessRule, Action, Operations, Peers
from control_plane.translate._xds import pack

DENY_FILTER = "agentmesh.access.deny"
ALLOW_FILTER = "agentmesh.access.allow"
HEALTH_POLICY = f"{RESERVED_ACCESS_POLICY_NAME}/grpc-health"
HEALTH_PREFIX = "/grpc.health.v1.Health/"


@dataclass(frozen=True)
class AgentAccess:
    """The AccessPolicies one agent enforces: its own and the mesh-wide one (at least one of them)."""

    own: AccessPolicy | None = None
    mesh_wide: AccessPolicy | None = None

    @classmethod
    def of(cls, own: AccessPolicy | None, mesh_wide: AccessPolicy | None) -> AgentAccess | None:
        """None when neither exists: the agent accepts every caller."""
        return None if own is None and mesh_wide is None else cls(own, mesh_wide)

    @property
    def default_action(self) -> Action:
        """The agent's own default_action, else the mesh-wide one's, else deny."""
        for policy in (self.own, self.mesh_wide):
            if policy is not None and policy.spec.default_action is not None:
                return policy.spec.default_action
        return "deny"

    def named_rules(self) -> list[tuple[str, AccessRule]]:
        """(RBAC policy name, rule) for every rule, mesh-wide ones first."""
        return [
            (f"{policy.metadata.name}/{rule_name(rule, index)}", rule)
            for policy in (self.mesh_wide, self.own)
            if policy is not None
            for index, rule in enumerate(policy.spec.rules)
        ]


def _path(matcher: string_pb2.StringMatcher) -> rbac_config.Permission:
    return rbac_config.Permission(url_path=path_pb2.PathMatcher(path=matcher))


def _permissions(to: Operations | None) -> list[rbac_config.Permission]:
    if to is None:
        return [rbac_config.Permission(any=True)]
    permissions = [_path(string_pb2.StringMatcher(prefix=f"/{service}/")) for service in to.services]
    for method in to.methods:
        service, _, name = method.partition("/")
        matcher = (
            string_pb2.StringMatcher(prefix=f"/{service}/")
            if name == "*"
            else string_pb2.StringMatcher(exact=f"/{method}")
        )
        permissions.append(_path(matcher))
    return permissions


def _authenticated(name: string_pb2.StringMatcher) -> rbac_config.Principal:
    return rbac_config.Principal(authenticated=rbac_config.Principal.Authenticated(principal_name=name))


def agent_principal(agent: str, trust_domain: str = DEFAULT_TRUST_DOMAIN) -> rbac_config.Principal:
    """Callers whose certificate names `agent` of any team in `trust_domain`."""
    in_domain = _authenticated(string_pb2.StringMatcher(prefix=f"{SCHEME}{trust_domain}/team/"))
    named = _authenticated(string_pb2.StringMatcher(suffix=f"/agent/{agent}"))
    return rbac_config.Principal(and_ids=rbac_config.Principal.Set(ids=[in_domain, named]))


def team_principal(team: str, trust_domain: str = DEFAULT_TRUST_DOMAIN) -> rbac_config.Principal:
    """Callers whose certificate names any agent of `team` in `trust_domain`."""
    return _authenticated(string_pb2.StringMatcher(prefix=f"{SCHEME}{trust_domain}/team/{team}/"))


def _principals(peers: Peers | None, trust_domain: str) -> list[rbac_config.Principal]:
    if peers is None or peers.anyone:
        return [rbac_config.Principal(any=True)]
    return [agent_principal(a, trust_domain) for a in peers.agents] + [
        team_principal(t, trust_domain) for t in peers.teams
    ]


def _rule_policy(rule: AccessRule, trust_domain: str) -> rbac_config.Policy:
    return rbac_config.Policy(permissions=_permissions(rule.to), principals=_principals(rule.from_, trust_domain))


def _filter(
    name: str, action: rbac_config.RBAC.Action.ValueType, policies: dict[str, rbac_config.Policy]
) -> hcm.HttpFilter:
    config = rbac_filter.RBAC(rules=rbac_config.RBAC(action=action, policies=policies))
    return hcm.HttpFilter(name=name, typed_config=pack(config))


def rule_name(rule: AccessRule, index: int) -> str:
    """A rule's name within its AccessPolicy: its own, else `rule-<index>`."""
    return rule.name or f"rule-{index}"


def rbac_filters(access: AgentAccess | None, *, trust_domain: str = DEFAULT_TRUST_DOMAIN) -> list[hcm.HttpFilter]:
    """The RBAC filters for one agent's inbound chain, in order; none when no AccessPolicy applies to it.

    `trust_domain` is the mesh's (the control plane's `--trust-domain`): principals
    match only certificates of that domain.
    """
    if access is None:
        return []
    rules = access.named_rules()
    deny = {name: _rule_policy(rule, trust_domain) for name, rule in rules if rule.action == "deny"}
    filters = [_filter(DENY_FILTER, rbac_config.RBAC.DENY, deny)] if deny else []
    if access.default_action == "deny":
        allow = {name: _rule_policy(rule, trust_domain) for name, rule in rules if rule.action == "allow"}
        allow[HEALTH_POLICY] = rbac_config.Policy(
            permissions=[_path(string_pb2.StringMatcher(prefix=HEALTH_PREFIX))],
            principals=[rbac_config.Principal(any=True)],
        )
        filters.append(_filter(ALLOW_FILTER, rbac_config.RBAC.ALLOW, allow))
    return filters
