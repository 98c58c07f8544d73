"""RDS: one RouteConfiguration per agent (`agent/<name>`) and per capability (`service/<Service>`).

Each holds one virtual host (domains `<name>` and `<name>:*`, what a
`xds:///<name>` client sends as authority) whose routes are built from the
target's TrafficPolicy, in this order for each policy route and match:

1. version pins (agent targets): the same match plus `<version_header>: <v>`
   goes to `agent/<name>/<v>` only;
2. the route itself: `weighted_clusters` over the split (a single `cluster`
   when one backend is left), `timeout`, `max_stream_duration` (what gRPC
   clients read, gRFC A31), `retry_policy`, `hash_policy` for sticky sessions.

A request no policy route matches falls through to a final catch-all route
with the spec's split, timeout and retries; without a split, every version
with instances gets an equal share (an agent), or the `service/<Service>`
cluster of all implementations takes it (a service; when implementations are
reached over mTLS, their version clusters by instance count instead).

Skills not marked idempotent are never retried unless the policy says
`retry_non_idempotent: true`: before a route that retries and covers such
methods, an exact-path route per method carries the same action without a
retry policy. Split entries naming versions or agents that are not
registered (any more) are dropped with a note, and the rest keep their
relative weights; the policy validator reports them as errors beforehand.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from envoy.type.matcher.v3 import regex_pb2, string_pb2
from google.protobuf import wrappers_pb2

from control_plane.policy.model import (
    DEFAULT_VERSION_HEADER,
    Backend,
    HeaderMatch,
    Retries,
    RouteMatch,
    TrafficPolicySpec,
)
from control_plane.translate._xds import (
    agent_cluster_name,
    agent_route_name,
    duration,
    service_cluster_name,
    service_route_name,
)
from control_plane.translate.view import AgentView

DEFAULT_ROUTE = "default"


@dataclass(frozen=True)
class _Action:
    """Where matched requests go and how: what every Envoy route of one policy route shares."""

    backends: tuple[tuple[str, int], ...]
    timeout: float | None = None
    retries: Retries | None = None
    sticky_header: str | None = None


def _header_matcher(match: HeaderMatch) -> rc.HeaderMatcher:
    matcher = rc.HeaderMatcher(name=match.name, invert_match=match.invert)
    if match.exact is not None:
        matcher.string_match.CopyFrom(string_pb2.StringMatcher(exact=match.exact))
    elif match.prefix is not None:
        matcher.string_match.CopyFrom(string_pb2.StringMatcher(prefix=match.prefix))
    elif match.regex is not None:
        matcher.string_match.CopyFrom(string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=match.regex)))
    else:
        matcher.present_match = bool(match.present)
    return matcher


def _retry_policy(retries: Retries) -> rc.RetryPolicy:
    policy = rc.RetryPolicy(
        retry_on=",".join(retries.retry_on),
        num_retries=wrappers_pb2.UInt32Value(value=retries.attempts),
        retry_back_off=rc.RetryPolicy.RetryBackOff(
            base_interval=duration(retries.backoff.base_interval),
            max_interval=duration(retries.backoff.effective_max),
        ),
    )
    if retries.per_try_timeout is not None:
        policy.per_try_timeout.CopyFrom(duration(retries.per_try_timeout))
    return policy


def _route_action(action: _Action) -> rc.RouteAction:
    result = rc.RouteAction(
        # 0 turns Envoy's 15 s default off: without a policy timeout the caller's deadline governs.
        timeout=duration(action.timeout or 0),
        max_stream_duration=rc.RouteAction.MaxStreamDuration(grpc_timeout_header_max=duration(action.timeout or 0)),
    )
    if action.timeout is not None:
        result.max_stream_duration.max_stream_duration.CopyFrom(duration(action.timeout))
    if len(action.backends) == 1:
        result.cluster = action.backends[0][0]
    else:
        result.weighted_clusters.CopyFrom(
            rc.WeightedCluster(
                clusters=[
                    rc.WeightedCluster.ClusterWeight(name=name, weight=wrappers_pb2.UInt32Value(value=weight))
                    for name, weight in action.backends
                ]
            )
        )
        if action.sticky_header is not None:
            result.weighted_clusters.use_hash_policy.value = True
    if action.retries is not None and action.retries.attempts > 0:
        result.retry_policy.CopyFrom(_retry_policy(action.retries))
    if action.sticky_header is not None:
        result.hash_policy.append(
            rc.RouteAction.HashPolicy(header=rc.RouteAction.HashPolicy.Header(header_name=action.sticky_header))
        )
    return result


def _covers(pattern: str | None, method: str) -> bool:
    if pattern is None:
        return True
    service, _, name = pattern.partition("/")
    return method == pattern or (name == "*" and method.startswith(service + "/"))


class _RouteList:
    """Accumulates Envoy routes for one virtual host, expanding pins and no-retry methods."""

    def __init__(self, *, pins: Mapping[str, str], version_header: str | None, non_idempotent: Iterable[str]) -> None:
        self.routes: list[rc.Route] = []
        self._pins = pins
        self._version_header = version_header
        self._non_idempotent = sorted(non_idempotent)

    def add(self, name: str, match: RouteMatch | None, action: _Action) -> None:
        if self._version_header is not None:
            for version, cluster in self._pins.items():
                pin = rc.HeaderMatcher(name=self._version_header, string_match=string_pb2.StringMatcher(exact=version))
                self._emit(f"{name}/pin/{version}", match, [pin], replace(action, backends=((cluster, 1),)))
        self._emit(name, match, [], action)

    def _emit(self, name: str, match: RouteMatch | None, extra: list[rc.HeaderMatcher], action: _Action) -> None:
        method = match.method if match is not None else None
        headers = [_header_matcher(h) for h in match.headers] if match is not None else []
        headers += extra
        retries = action.retries
        if retries is not None and retries.attempts > 0 and not retries.retry_non_idempotent:
            covered = [m for m in self._non_idempotent if _covers(method, m)]
            if method is not None and method in covered:
                action = replace(action, retries=None)
            else:
                for skill in covered:
                    self._append(
                        f"{name}/no-retry/{skill}",
                        rc.RouteMatch(path=f"/{skill}"),
                        headers,
                        replace(action, retries=None),
                    )
        if method is None:
            route_match = rc.RouteMatch(prefix="/")
        elif method.endswith("/*"):
            route_match = rc.RouteMatch(prefix=f"/{method[:-1]}")
        else:
            route_match = rc.RouteMatch(path=f"/{method}")
        self._append(name, route_match, headers, action)

    def _append(self, name: str, match: rc.RouteMatch, headers: list[rc.HeaderMatcher], action: _Action) -> None:
        match.headers.extend(headers)
        self.routes.append(rc.Route(name=name, match=match, route=_route_action(action)))


def _policy_routes(
    routes: _RouteList,
    spec: TrafficPolicySpec | None,
    policy_name: str,
    default: tuple[tuple[str, int], ...],
    resolve: _Resolver,
) -> None:
    sticky = spec.sticky.header if spec is not None and spec.sticky is not None else None
    if spec is None:
        routes.add(DEFAULT_ROUTE, None, _Action(default))
        return
    base = resolve(spec.split, "spec.split") or default
    catch_all = False
    for index, route in enumerate(spec.routes):
        where = f"spec.routes[{index}].split"
        action = _Action(
            backends=resolve(route.split, where) or base,
            timeout=route.timeout if route.timeout is not None else spec.timeout,
            retries=route.retries if route.retries is not None else spec.retries,
            sticky_header=sticky,
        )
        name = f"{policy_name}/{route.name or index}"
        for match in route.match or (None,):
            routes.add(name, match, action)
        catch_all = catch_all or route.is_catch_all
    if not catch_all:
        routes.add(DEFAULT_ROUTE, None, _Action(base, spec.timeout, spec.retries, sticky))


class _Resolver:
    """Turns a split into (cluster, weight) pairs over what is registered; notes what it drops."""

    def __init__(self, owner: str, clusters: Mapping[tuple[str | None, str | None], Sequence[str]], notes: list[str]):
        self._owner = owner
        self._clusters = clusters
        self._notes = notes

    def __call__(self, split: tuple[Backend, ...], where: str) -> tuple[tuple[str, int], ...]:
        if not split:
            return ()
        picked: list[tuple[Sequence[str], int]] = []
        for backend in split:
            clusters = self._clusters.get((backend.agent, backend.version), ())
            if not clusters:
                what = " ".join(f"{k} {v}" for k, v in (("agent", backend.agent), ("version", backend.version)) if v)
                self._notes.append(f"{self._owner}: {where}: {what} is not registered; its share goes to the rest")
            elif backend.weight > 0:
                picked.append((clusters, backend.weight))
        if not picked:
            self._notes.append(
                f"{self._owner}: {where}: no registered entry of the split has weight; using the default split"
            )
            return ()
        # Weights stay integers: an agent's share is divided evenly over its versions.
        scale = math.lcm(*(len(clusters) for clusters, _ in picked))
        return tuple((cluster, weight * scale // len(clusters)) for clusters, weight in picked for cluster in clusters)


def _virtual_host(name: str, domain: str, routes: list[rc.Route]) -> route_pb2.RouteConfiguration:
    host = rc.VirtualHost(name=name, domains=[domain, f"{domain}:*"], routes=routes)
    return route_pb2.RouteConfiguration(name=name, virtual_hosts=[host])


def agent_route_config(
    agent: AgentView, spec: TrafficPolicySpec | None, policy_name: str, notes: list[str]
) -> route_pb2.RouteConfiguration:
    """`agent/<name>`: routes over the agent's version clusters."""
    name = agent_route_name(agent.name)
    clusters: dict[tuple[str | None, str | None], list[str]] = {
        (None, v): [agent_cluster_name(agent.name, v)] for v in agent.versions
    }
    default = tuple((agent_cluster_name(agent.name, v), 1) for v in agent.live_versions or sorted(agent.versions))
    version_header = spec.version_header if spec is not None else DEFAULT_VERSION_HEADER
    routes = _RouteList(
        pins={v: agent_cluster_name(agent.name, v) for v in sorted(agent.versions)},
        version_header=version_header,
        non_idempotent=[m for m in agent.methods if m not in agent.idempotent_methods],
    )
    if default:
        _policy_routes(routes, spec, policy_name, default, _Resolver(name, clusters, notes))
    return _virtual_host(name, agent.name, routes.routes)


def service_route_config(
    service: str,
    implementers: Sequence[AgentView],
    spec: TrafficPolicySpec | None,
    policy_name: str,
    notes: list[str],
    *,
    by_agent: bool = False,
) -> route_pb2.RouteConfiguration:
    """`service/<Service>`: routes to all implementations (`service/<Service>`) or a split across agents.

    With `by_agent` the default goes to every implementation's live version
    clusters, weighted by their instance counts, instead of the one
    `service/<Service>` cluster (whose endpoints could not each be checked
    against their own agent's identity).
    """
    name = service_route_name(service)
    clusters: dict[tuple[str | None, str | None], list[str]] = {}
    for agent in implementers:
        versions = agent.live_versions or tuple(sorted(agent.versions))
        clusters[(agent.name, None)] = [agent_cluster_name(agent.name, v) for v in versions]
        for version in agent.versions:
            clusters[(agent.name, version)] = [agent_cluster_name(agent.name, version)]
    non_idempotent = {
        m
        for agent in implementers
        for m in agent.methods
        if m.startswith(service + "/") and m not in agent.idempotent_methods
    }
    routes = _RouteList(pins={}, version_header=None, non_idempotent=non_idempotent)
    default: tuple[tuple[str, int], ...] = ((service_cluster_name(service), 1),)
    if by_agent:
        default = tuple(
            (agent_cluster_name(agent.name, v), len(agent.versions[v]))
            for agent in implementers
            for v in agent.live_versions
        )
    _policy_routes(routes, spec, policy_name, default, _Resolver(name, clusters, notes))
    return _virtual_host(name, service, routes.routes)
