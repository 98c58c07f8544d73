"""Access: an AccessPolicy as Envoy RBAC HTTP filters for the agent's inbound listener.

Deny wins over allow (Envoy RBAC and Istio semantics) with two filters in a row:

1. `agentmesh.access.deny`  (action DENY): the policy's deny rules;
2. `agentmesh.access.allow` (action ALLOW): its allow rules, present only when
   default_action is deny; an ALLOW filter refuses whatever no policy matches.

Callers are identified by the headers their sidecar asserts
(`x-agentmesh-source-agent`, `x-agentmesh-source-team`), an assertion, not a
proof, until the mesh has mTLS. Operations match the gRPC path: a service is
the prefix `/<package.Service>/`, a method the exact `/<package.Service>/<Method>`.
gRPC health checks are always allowed, so probes keep working under default-deny.
"""

from __future__ import annotations

from envoy.config.rbac.v3 import rbac_pb2 as rbac_config
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as rbac_filter
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm
from envoy.type.matcher.v3 import path_pb2, string_pb2

from control_plane.policy.model import (
    SOURCE_AGENT_HEADER,
    SOURCE_TEAM_HEADER,
    AccessPolicySpec,
    AccessRule,
    Operations,
    Peers,
)
from control_plane.translate._xds import pack

DENY_FILTER = "agentmesh.access.deny"
ALLOW_FILTER = "agentmesh.access.allow"
HEALTH_POLICY = "builtin/grpc-health"
HEALTH_PREFIX = "/grpc.health.v1.Health/"


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


def _header(name: str, value: str) -> rbac_config.Principal:
    return rbac_config.Principal(
        header=route_components_pb2.HeaderMatcher(name=name, string_match=string_pb2.StringMatcher(exact=value))
    )


def _principals(peers: Peers | None) -> list[rbac_config.Principal]:
    if peers is None or peers.anyone:
        return [rbac_config.Principal(any=True)]
    return [_header(SOURCE_AGENT_HEADER, a) for a in peers.agents] + [
        _header(SOURCE_TEAM_HEADER, t) for t in peers.teams
    ]


def _rule_policy(rule: AccessRule) -> rbac_config.Policy:
    return rbac_config.Policy(permissions=_permissions(rule.to), principals=_principals(rule.from_))


def _filter(
    name: str, action: rbac_config.RBAC.Action.ValueType, policies: dict[str, rbac_config.Policy]
) -> hcm.HttpFilter:
    config = rbac_filter.RBAC(rules=rbac_config.RBAC(action=action, policies=policies))
    return hcm.HttpFilter(name=name, typed_config=pack(config))


def rule_name(rule: AccessRule, index: int) -> str:
    """The RBAC policy name of a rule (shown in denials and metrics)."""
    return rule.name or f"rule-{index}"


def rbac_filters(spec: AccessPolicySpec | None) -> list[hcm.HttpFilter]:
    """The RBAC filters for one agent's inbound chain, in order; none when no AccessPolicy targets it."""
    if spec is None:
        return []
    deny = {rule_name(r, i): _rule_policy(r) for i, r in enumerate(spec.rules) if r.action == "deny"}
    filters = [_filter(DENY_FILTER, rbac_config.RBAC.DENY, deny)] if deny else []
    if spec.default_action == "deny":
        allow = {rule_name(r, i): _rule_policy(r) for i, r in enumerate(spec.rules) if r.action == "allow"}
        allow[HEALTH_POLICY] = rbac_config.Policy(
            permissions=[_path(string_pb2.StringMatcher(prefix=HEALTH_PREFIX))],
            principals=[rbac_config.Principal(any=True)],
        )
        filters.append(_filter(ALLOW_FILTER, rbac_config.RBAC.ALLOW, allow))
    return filters
