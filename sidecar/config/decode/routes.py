"""RDS: `RouteConfiguration` -> `RouteTable`, the egress route match and its action.

What the sidecar supports, decided as Envoy decides:

- match: `prefix`, `path`, `safe_regex` (full match), `case_sensitive: false`,
  header matchers (`string_match` exact/prefix/suffix/contains/safe_regex with
  `ignore_case`, the deprecated `*_match` forms, `present_match`,
  `invert_match`); a matcher with no value matches when the header is present.
- action: `cluster` or `weighted_clusters` (zero weights dropped), `timeout`
  (unset or 0: none, and the caller's deadline governs; Envoy would default an
  unset timeout to 15 s, which is why the control plane always sets it),
  `retry_policy` (the route's, else the virtual host's), the first `header`
  hash policy (other hash policies are ignored, as gRPC's xDS client does).
- retries: gRPC `retry_on` names map to status codes; other conditions
  (`5xx`, `reset`, ...) are HTTP conditions a gRPC upstream never answers with
  and are ignored, as gRPC's xDS client ignores them; a policy left with no
  code, or with `num_retries: 0`, means no retries. `num_retries` defaults to
  1 and the back-off to 25 ms base, 10x base max, as in Envoy.

Anything else that would change where or how a call goes (redirects, direct
responses, rewrites, mirrors, header mutations, runtime fractions, ...) is a
`DecodeError` naming the field, and the whole RDS update is NACKed.
"""

from __future__ import annotations

import re
from typing import Any

import grpc

from sidecar.config.decode._proto import DecodeError, optional_seconds, regex, seconds, uint
from sidecar.config.snapshot import (
    HeaderMatcher,
    RetryPolicy,
    Route,
    RouteAction,
    RouteTable,
    VirtualHost,
    WeightedCluster,
)

# RetryPolicy.retry_on, gRPC flavour (x-envoy-retry-grpc-on).
GRPC_RETRY_ON: dict[str, grpc.StatusCode] = {
    "cancelled": grpc.StatusCode.CANCELLED,
    "deadline-exceeded": grpc.StatusCode.DEADLINE_EXCEEDED,
    "internal": grpc.StatusCode.INTERNAL,
    "resource-exhausted": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "unavailable": grpc.StatusCode.UNAVAILABLE,
}
DEFAULT_NUM_RETRIES = 1
DEFAULT_BACKOFF_BASE = 0.025
BACKOFF_MAX_FACTOR = 10

_UNSUPPORTED_MATCH = (
    "connect_matcher",
    "path_separated_prefix",
    "path_match_policy",
    "runtime_fraction",
    "tls_context",
)
_UNSUPPORTED_ACTION = (
    "prefix_rewrite",
    "regex_rewrite",
    "path_rewrite_policy",
    "path_rewrite",
    "request_mirror_policies",
    "internal_redirect_policy",
)
_HEADER_MUTATIONS = ("request_headers_to_add", "request_headers_to_remove")


def _refuse(message: Any, fields: tuple[str, ...], at: str) -> None:
    """Raises for the first of `fields` set in `message` (non-default scalar, non-empty list, present message)."""
    present = {descriptor.name for descriptor, _ in message.ListFields()}
    for field in fields:
        if field in present:
            raise DecodeError(f"{at}{field} is not supported")


def decode_route_configuration(config: Any) -> RouteTable:
    """Decodes a config.route.v3.RouteConfiguration; raises DecodeError naming the offending field."""
    _refuse(config, (*_HEADER_MUTATIONS, "cluster_specifier_plugins", "vhds"), "")
    hosts = tuple(_virtual_host(host, f"virtual_hosts[{i}]") for i, host in enumerate(config.virtual_hosts))
    return RouteTable(name=config.name, virtual_hosts=hosts)


def _virtual_host(host: Any, at: str) -> VirtualHost:
    _refuse(host, (*_HEADER_MUTATIONS, "matcher", "request_mirror_policies"), f"{at}: ")
    if host.require_tls:
        raise DecodeError(f"{at}: require_tls is not supported")
    if not host.domains:
        raise DecodeError(f"{at}: domains is empty")
    default_retry = _retry_policy(host.retry_policy, f"{at}.retry_policy") if host.HasField("retry_policy") else None
    routes = tuple(_route(route, f"{at}.routes[{i}]", i, default_retry) for i, route in enumerate(host.routes))
    return VirtualHost(name=host.name, domains=tuple(host.domains), routes=routes)


def _route(route: Any, at: str, index: int, default_retry: RetryPolicy | None) -> Route:
    action_kind = route.WhichOneof("action")
    if action_kind is None:
        raise DecodeError(f"{at}: the route has no action")
    if action_kind != "route":
        raise DecodeError(f"{at}: {action_kind} is not supported")
    _refuse(route, _HEADER_MUTATIONS, f"{at}: ")
    prefix, path, path_regex = _path_match(route.match, f"{at}.match")
    headers = tuple(_header_matcher(h, f"{at}.match.headers[{i}]") for i, h in enumerate(route.match.headers))
    return Route(
        name=route.name or str(index),
        action=_route_action(route.route, f"{at}.route", default_retry),
        prefix=prefix,
        path=path,
        path_regex=path_regex,
        headers=headers,
    )


def _path_match(match: Any, at: str) -> tuple[str | None, str | None, re.Pattern[str] | None]:
    """(prefix, path, path_regex); a case-insensitive prefix or path becomes a regex."""
    _refuse(match, _UNSUPPORTED_MATCH, f"{at}.")
    for field in ("query_parameters", "dynamic_metadata", "filter_state"):
        if len(getattr(match, field)):
            raise DecodeError(f"{at}.{field} is not supported")
    kind = match.WhichOneof("path_specifier")
    ignore_case = match.HasField("case_sensitive") and not match.case_sensitive.value
    if kind == "prefix":
        if ignore_case:
            return None, None, regex(re.escape(match.prefix) + ".*", at, re.IGNORECASE | re.DOTALL)
        return match.prefix, None, None
    if kind == "path":
        if ignore_case:
            return None, None, regex(re.escape(match.path), at, re.IGNORECASE)
        return None, match.path, None
    if kind == "safe_regex":
        # Envoy: case_sensitive does not apply to safe_regex.
        return None, None, regex(match.safe_regex.regex, f"{at}.safe_regex")
    raise DecodeError(f"{at}: no path specifier (prefix, path or safe_regex)")


def _string_match(matcher: Any, at: str) -> dict[str, Any]:
    """A type.matcher.v3.StringMatcher as HeaderMatcher keyword arguments."""
    kind = matcher.WhichOneof("match_pattern")
    if kind is None or kind == "custom":
        raise DecodeError(f"{at}: {'custom' if kind else 'no match pattern'} is not supported")
    if kind == "safe_regex":
        return {"regex": regex(matcher.safe_regex.regex, f"{at}.safe_regex")}
    value: str = getattr(matcher, kind)
    if not matcher.ignore_case:
        return {kind: value}
    body = {
        "exact": re.escape(value),
        "prefix": re.escape(value) + ".*",
        "suffix": ".*" + re.escape(value),
        "contains": ".*" + re.escape(value) + ".*",
    }[kind]
    return {"regex": regex(body, at, re.IGNORECASE | re.DOTALL)}


def _header_matcher(header: Any, at: str) -> HeaderMatcher:
    if header.treat_missing_header_as_empty:
        raise DecodeError(f"{at}: treat_missing_header_as_empty is not supported")
    name = header.name.lower()
    if not name:
        raise DecodeError(f"{at}: the header name is empty")
    kind = header.WhichOneof("header_match_specifier")
    spec: dict[str, Any]
    if kind is None:
        # Envoy: without a value to compare, the matcher asks whether the header is present.
        spec = {"present": True}
    elif kind == "present_match":
        spec = {"present": header.present_match}
    elif kind == "string_match":
        spec = _string_match(header.string_match, f"{at}.string_match")
    elif kind == "safe_regex_match":
        spec = {"regex": regex(header.safe_regex_match.regex, f"{at}.safe_regex_match")}
    elif kind in ("exact_match", "prefix_match", "suffix_match", "contains_match"):
        spec = {kind.removesuffix("_match"): getattr(header, kind)}
    else:
        raise DecodeError(f"{at}: {kind} is not supported")
    return HeaderMatcher(name=name, invert=header.invert_match, **spec)


def _clusters(action: Any, at: str) -> tuple[WeightedCluster, ...]:
    kind = action.WhichOneof("cluster_specifier")
    if kind == "cluster":
        if not action.cluster:
            raise DecodeError(f"{at}.cluster is empty")
        return (WeightedCluster(name=action.cluster, weight=1),)
    if kind != "weighted_clusters":
        raise DecodeError(f"{at}: {kind} is not supported" if kind else f"{at}: no cluster specifier")
    split = action.weighted_clusters
    if split.header_name:
        raise DecodeError(f"{at}.weighted_clusters.header_name is not supported")
    clusters = []
    for i, weighted in enumerate(split.clusters):
        where = f"{at}.weighted_clusters.clusters[{i}]"
        if weighted.cluster_header:
            raise DecodeError(f"{where}.cluster_header is not supported")
        if not weighted.name:
            raise DecodeError(f"{where}.name is empty")
        _refuse(weighted, _HEADER_MUTATIONS, f"{where}.")
        weight = uint(weighted, "weight", 0)
        if weight > 0:
            clusters.append(WeightedCluster(name=weighted.name, weight=weight))
    if not clusters:
        raise DecodeError(f"{at}.weighted_clusters: the total weight is 0")
    return tuple(clusters)


def _route_action(action: Any, at: str, default_retry: RetryPolicy | None) -> RouteAction:
    _refuse(action, _UNSUPPORTED_ACTION, f"{at}.")
    timeout = optional_seconds(action, "timeout", f"{at}.timeout")
    retry = (
        _retry_policy(action.retry_policy, f"{at}.retry_policy") if action.HasField("retry_policy") else default_retry
    )
    hash_header = next((p.header.header_name.lower() for p in action.hash_policy if p.HasField("header")), None)
    return RouteAction(
        clusters=_clusters(action, at),
        timeout=timeout or None,
        retry=retry,
        hash_header=hash_header or None,
    )


def _retry_policy(policy: Any, at: str) -> RetryPolicy | None:
    """A RetryPolicy, or None when it retries nothing the sidecar can see."""
    codes = frozenset(
        GRPC_RETRY_ON[name] for name in (n.strip() for n in policy.retry_on.split(",")) if name in GRPC_RETRY_ON
    )
    num_retries = uint(policy, "num_retries", DEFAULT_NUM_RETRIES)
    per_try = optional_seconds(policy, "per_try_timeout", f"{at}.per_try_timeout")
    base, maximum = DEFAULT_BACKOFF_BASE, DEFAULT_BACKOFF_BASE * BACKOFF_MAX_FACTOR
    if policy.HasField("retry_back_off"):
        backoff = policy.retry_back_off
        where = f"{at}.retry_back_off"
        if not backoff.HasField("base_interval") or seconds(backoff.base_interval, where) <= 0:
            raise DecodeError(f"{where}.base_interval must be set and greater than 0")
        base = seconds(backoff.base_interval, f"{where}.base_interval")
        maximum = base * BACKOFF_MAX_FACTOR
        if backoff.HasField("max_interval"):
            maximum = seconds(backoff.max_interval, f"{where}.max_interval")
            if maximum < base:
                raise DecodeError(f"{where}.max_interval ({maximum:g}s) is less than base_interval ({base:g}s)")
    if not codes or num_retries == 0:
        return None
    return RetryPolicy(
        retry_on=codes, num_retries=num_retries, per_try_timeout=per_try or None, backoff_base=base, backoff_max=maximum
    )
