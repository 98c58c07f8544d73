"""RDS decoding: matches, actions, retries, hash policy, and every refusal with its message."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from envoy.type.matcher.v3 import regex_pb2, string_pb2
from envoy.type.v3 import range_pb2
from google.protobuf import duration_pb2, wrappers_pb2

from sidecar.config.decode import DecodeError
from sidecar.config.decode.routes import decode_route_configuration
from sidecar.config.snapshot import RetryPolicy, WeightedCluster


def seconds(value: float) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(round(value * 1e9))
    return duration


def config(*routes: rc.Route, **host: Any) -> route_pb2.RouteConfiguration:
    virtual_host = rc.VirtualHost(name="agent/researcher", domains=["researcher"], routes=list(routes), **host)
    return route_pb2.RouteConfiguration(name="agent/researcher", virtual_hosts=[virtual_host])


def route(match: rc.RouteMatch | None = None, **action: Any) -> rc.Route:
    action.setdefault("cluster", "agent/researcher/v1")
    return rc.Route(name="r", match=match or rc.RouteMatch(prefix="/"), route=rc.RouteAction(**action))


def only_route(table_config: route_pb2.RouteConfiguration) -> Any:
    return decode_route_configuration(table_config).virtual_hosts[0].routes[0]


def test_decodes_the_virtual_host_and_a_plain_route() -> None:
    table = decode_route_configuration(config(route()))
    assert table.name == "agent/researcher"
    host = table.virtual_hosts[0]
    assert (host.name, host.domains) == ("agent/researcher", ("researcher",))
    decoded = host.routes[0]
    assert decoded.name == "r"
    assert decoded.prefix == "/"
    assert decoded.action.clusters == (WeightedCluster("agent/researcher/v1", 1),)
    assert decoded.action.timeout is None
    assert decoded.action.retry is None
    assert decoded.action.hash_header is None


def test_an_unnamed_route_is_named_by_its_index() -> None:
    unnamed = rc.Route(match=rc.RouteMatch(prefix="/"), route=rc.RouteAction(cluster="c"))
    assert decode_route_configuration(config(route(), unnamed)).virtual_hosts[0].routes[1].name == "1"


def test_path_and_regex_matches() -> None:
    exact = only_route(config(route(rc.RouteMatch(path="/research.v1.Researcher/Search"))))
    assert (exact.path, exact.prefix, exact.path_regex) == ("/research.v1.Researcher/Search", None, None)
    assert exact.matches("/research.v1.Researcher/Search", {})
    assert not exact.matches("/research.v1.Researcher/Searches", {})
    pattern = only_route(config(route(rc.RouteMatch(safe_regex=regex_pb2.RegexMatcher(regex="/research\\..*")))))
    assert pattern.path_regex is not None
    assert pattern.matches("/research.v1.Researcher/Search", {})
    assert not pattern.matches("/x/research.v1", {})  # full match, as Envoy


def test_case_insensitive_prefix_and_path_become_regexes() -> None:
    insensitive = wrappers_pb2.BoolValue(value=False)
    prefix = only_route(config(route(rc.RouteMatch(prefix="/Research.", case_sensitive=insensitive))))
    assert prefix.prefix is None
    assert prefix.matches("/research.v1.Researcher/Search", {})
    assert not prefix.matches("/other", {})
    path = only_route(config(route(rc.RouteMatch(path="/A/B", case_sensitive=insensitive))))
    assert path.matches("/a/b", {}) and not path.matches("/a/bc", {})
    sensitive = only_route(config(route(rc.RouteMatch(prefix="/R", case_sensitive=wrappers_pb2.BoolValue(value=True)))))
    assert sensitive.prefix == "/R"


def header_route(*headers: rc.HeaderMatcher) -> Any:
    return only_route(config(route(rc.RouteMatch(prefix="/", headers=list(headers)))))


def test_header_string_matchers() -> None:
    def matcher(**kwargs: Any) -> rc.HeaderMatcher:
        return rc.HeaderMatcher(name="X-Tenant", string_match=string_pb2.StringMatcher(**kwargs))

    cases = {
        "exact": (matcher(exact="beta"), "beta", "betas"),
        "prefix": (matcher(prefix="be"), "beta", "alpha"),
        "suffix": (matcher(suffix="ta"), "beta", "alpha"),
        "contains": (matcher(contains="et"), "beta", "alpha"),
        "regex": (matcher(safe_regex=regex_pb2.RegexMatcher(regex="b.t.")), "beta", "xbeta"),
        "exact ignore_case": (matcher(exact="BETA", ignore_case=True), "Beta", "Betas"),
        "prefix ignore_case": (matcher(prefix="BE", ignore_case=True), "beta", "abeta"),
        "suffix ignore_case": (matcher(suffix="TA", ignore_case=True), "beta", "betas"),
        "contains ignore_case": (matcher(contains="ET", ignore_case=True), "beta", "bta"),
    }
    for what, (proto, good, bad) in cases.items():
        decoded = header_route(proto)
        assert decoded.headers[0].name == "x-tenant", what
        assert decoded.matches("/", {"x-tenant": good}), what
        assert not decoded.matches("/", {"x-tenant": bad}), what
        assert not decoded.matches("/", {}), what


def test_deprecated_header_forms_presence_and_inversion() -> None:
    legacy = header_route(
        rc.HeaderMatcher(name="a", exact_match="1"),
        rc.HeaderMatcher(name="b", prefix_match="p"),
        rc.HeaderMatcher(name="c", suffix_match="s"),
        rc.HeaderMatcher(name="d", contains_match="c"),
        rc.HeaderMatcher(name="e", safe_regex_match=regex_pb2.RegexMatcher(regex="[0-9]+")),
    )
    assert legacy.matches("/", {"a": "1", "b": "px", "c": "xs", "d": "xcx", "e": "42"})
    assert not legacy.matches("/", {"a": "1", "b": "px", "c": "xs", "d": "xcx", "e": "4x"})

    present = header_route(rc.HeaderMatcher(name="p", present_match=True))
    assert present.matches("/", {"p": ""}) and not present.matches("/", {})
    absent = header_route(rc.HeaderMatcher(name="p", present_match=False))
    assert absent.matches("/", {}) and not absent.matches("/", {"p": "1"})
    # No value to compare: Envoy asks for presence; inverted, it matches when the header is absent.
    bare = header_route(rc.HeaderMatcher(name="p"))
    assert bare.matches("/", {"p": "x"}) and not bare.matches("/", {})
    inverted_bare = header_route(rc.HeaderMatcher(name="p", invert_match=True))
    assert inverted_bare.matches("/", {}) and not inverted_bare.matches("/", {"p": "x"})
    inverted = header_route(
        rc.HeaderMatcher(name="t", string_match=string_pb2.StringMatcher(exact="beta"), invert_match=True)
    )
    assert inverted.matches("/", {"t": "alpha"}) and not inverted.matches("/", {"t": "beta"})
    assert not inverted.matches("/", {})  # Envoy: an absent header never matches a value matcher


def test_weighted_clusters_drop_zero_weights() -> None:
    split = rc.WeightedCluster(
        clusters=[
            rc.WeightedCluster.ClusterWeight(name="v1", weight=wrappers_pb2.UInt32Value(value=90)),
            rc.WeightedCluster.ClusterWeight(name="v2", weight=wrappers_pb2.UInt32Value(value=10)),
            rc.WeightedCluster.ClusterWeight(name="v3", weight=wrappers_pb2.UInt32Value(value=0)),
        ]
    )
    decoded = only_route(
        config(rc.Route(match=rc.RouteMatch(prefix="/"), route=rc.RouteAction(weighted_clusters=split)))
    )
    assert decoded.action.clusters == (WeightedCluster("v1", 90), WeightedCluster("v2", 10))


def test_timeouts_zero_means_none() -> None:
    assert only_route(config(route(timeout=seconds(20)))).action.timeout == 20.0
    assert only_route(config(route(timeout=seconds(0)))).action.timeout is None
    assert only_route(config(route(timeout=seconds(0.25)))).action.timeout == 0.25


def test_retry_policy_grpc_codes_and_envoy_defaults() -> None:
    policy = rc.RetryPolicy(
        retry_on="cancelled, deadline-exceeded,internal,resource-exhausted,unavailable,5xx,reset",
        per_try_timeout=seconds(8),
    )
    retry = only_route(config(route(retry_policy=policy))).action.retry
    assert retry == RetryPolicy(
        retry_on=frozenset(
            {
                grpc.StatusCode.CANCELLED,
                grpc.StatusCode.DEADLINE_EXCEEDED,
                grpc.StatusCode.INTERNAL,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                grpc.StatusCode.UNAVAILABLE,
            }
        ),
        num_retries=1,
        per_try_timeout=8.0,
        backoff_base=0.025,
        backoff_max=0.25,
    )


def test_retry_backoff_and_count() -> None:
    policy = rc.RetryPolicy(
        retry_on="unavailable",
        num_retries=wrappers_pb2.UInt32Value(value=3),
        per_try_timeout=seconds(0),
        retry_back_off=rc.RetryPolicy.RetryBackOff(base_interval=seconds(0.1), max_interval=seconds(1)),
    )
    retry = only_route(config(route(retry_policy=policy))).action.retry
    assert retry is not None
    assert (retry.num_retries, retry.per_try_timeout, retry.backoff_base, retry.backoff_max) == (3, None, 0.1, 1.0)
    base_only = rc.RetryPolicy(
        retry_on="unavailable", retry_back_off=rc.RetryPolicy.RetryBackOff(base_interval=seconds(0.2))
    )
    retry = only_route(config(route(retry_policy=base_only))).action.retry
    assert retry is not None and retry.backoff_max == pytest.approx(2.0)


def test_retry_policies_that_retry_nothing_are_none() -> None:
    http_only = rc.RetryPolicy(retry_on="5xx,gateway-error")
    assert only_route(config(route(retry_policy=http_only))).action.retry is None
    no_retries = rc.RetryPolicy(retry_on="unavailable", num_retries=wrappers_pb2.UInt32Value(value=0))
    assert only_route(config(route(retry_policy=no_retries))).action.retry is None


def test_virtual_host_retry_policy_applies_to_routes_without_their_own() -> None:
    host_policy = rc.RetryPolicy(retry_on="unavailable", num_retries=wrappers_pb2.UInt32Value(value=4))
    own = rc.RetryPolicy(retry_on="internal")
    table = decode_route_configuration(config(route(), route(retry_policy=own), retry_policy=host_policy))
    inherited, overridden = table.virtual_hosts[0].routes
    assert inherited.action.retry is not None and inherited.action.retry.num_retries == 4
    assert overridden.action.retry is not None
    assert overridden.action.retry.retry_on == frozenset({grpc.StatusCode.INTERNAL})


def test_first_header_hash_policy() -> None:
    policies = [
        rc.RouteAction.HashPolicy(cookie=rc.RouteAction.HashPolicy.Cookie(name="c")),
        rc.RouteAction.HashPolicy(header=rc.RouteAction.HashPolicy.Header(header_name="X-Session")),
    ]
    assert only_route(config(route(hash_policy=policies))).action.hash_header == "x-session"


def _with_route(build: Callable[[rc.Route], None]) -> route_pb2.RouteConfiguration:
    routes = [route(), route(), route(), route()]
    build(routes[3])
    return config(*routes)


R3 = "virtual_hosts[0].routes[3]"
REFUSALS: list[tuple[str, Callable[[], route_pb2.RouteConfiguration], str]] = [
    (
        "redirect",
        lambda: _with_route(lambda r: r.redirect.CopyFrom(rc.RedirectAction(path_redirect="/x"))),
        f"{R3}: redirect is not supported",
    ),
    (
        "direct_response",
        lambda: _with_route(lambda r: r.direct_response.CopyFrom(rc.DirectResponseAction(status=503))),
        f"{R3}: direct_response is not supported",
    ),
    (
        "non_forwarding_action",
        lambda: _with_route(lambda r: r.non_forwarding_action.CopyFrom(rc.NonForwardingAction())),
        f"{R3}: non_forwarding_action is not supported",
    ),
    (
        "no action",
        lambda: _with_route(lambda r: r.ClearField("route")),
        f"{R3}: the route has no action",
    ),
    (
        "route headers",
        lambda: _with_route(
            lambda r: r.request_headers_to_add.append(base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key="k")))
        ),
        f"{R3}: request_headers_to_add is not supported",
    ),
    (
        "no path specifier",
        lambda: _with_route(lambda r: r.match.ClearField("prefix")),
        f"{R3}.match: no path specifier (prefix, path or safe_regex)",
    ),
    (
        "path_separated_prefix",
        lambda: _with_route(lambda r: setattr(r.match, "path_separated_prefix", "/a")),
        f"{R3}.match.path_separated_prefix is not supported",
    ),
    (
        "runtime_fraction",
        lambda: _with_route(lambda r: r.match.runtime_fraction.SetInParent()),
        f"{R3}.match.runtime_fraction is not supported",
    ),
    (
        "query_parameters",
        lambda: _with_route(lambda r: r.match.query_parameters.add(name="q")),
        f"{R3}.match.query_parameters is not supported",
    ),
    (
        "bad path regex",
        lambda: _with_route(lambda r: r.match.safe_regex.CopyFrom(regex_pb2.RegexMatcher(regex="(unclosed"))),
        f"{R3}.match.safe_regex: invalid regex '(unclosed'",
    ),
    (
        "range_match",
        lambda: _with_route(
            lambda r: r.match.headers.append(
                rc.HeaderMatcher(name="n", range_match=range_pb2.Int64Range(start=1, end=2))
            )
        ),
        f"{R3}.match.headers[0]: range_match is not supported",
    ),
    (
        "treat_missing_header_as_empty",
        lambda: _with_route(
            lambda r: r.match.headers.append(rc.HeaderMatcher(name="n", treat_missing_header_as_empty=True))
        ),
        f"{R3}.match.headers[0]: treat_missing_header_as_empty is not supported",
    ),
    (
        "header without a name",
        lambda: _with_route(lambda r: r.match.headers.append(rc.HeaderMatcher(present_match=True))),
        f"{R3}.match.headers[0]: the header name is empty",
    ),
    (
        "empty string matcher",
        lambda: _with_route(
            lambda r: r.match.headers.append(rc.HeaderMatcher(name="n", string_match=string_pb2.StringMatcher()))
        ),
        f"{R3}.match.headers[0].string_match: no match pattern is not supported",
    ),
    (
        "bad header regex",
        lambda: _with_route(
            lambda r: r.match.headers.append(
                rc.HeaderMatcher(name="n", safe_regex_match=regex_pb2.RegexMatcher(regex="*"))
            )
        ),
        f"{R3}.match.headers[0].safe_regex_match: invalid regex '*'",
    ),
    (
        "cluster_header",
        lambda: _with_route(lambda r: setattr(r.route, "cluster_header", "x-cluster")),
        f"{R3}.route: cluster_header is not supported",
    ),
    (
        "empty cluster",
        lambda: _with_route(lambda r: setattr(r.route, "cluster", "")),
        f"{R3}.route.cluster is empty",
    ),
    (
        "zero total weight",
        lambda: _with_route(
            lambda r: r.route.weighted_clusters.clusters.append(rc.WeightedCluster.ClusterWeight(name="v1"))
        ),
        f"{R3}.route.weighted_clusters: the total weight is 0",
    ),
    (
        "weighted cluster without a name",
        lambda: _with_route(
            lambda r: r.route.weighted_clusters.clusters.append(
                rc.WeightedCluster.ClusterWeight(weight=wrappers_pb2.UInt32Value(value=1))
            )
        ),
        f"{R3}.route.weighted_clusters.clusters[0].name is empty",
    ),
    (
        "prefix_rewrite",
        lambda: _with_route(lambda r: setattr(r.route, "prefix_rewrite", "/v2/")),
        f"{R3}.route.prefix_rewrite is not supported",
    ),
    (
        "mirror",
        lambda: _with_route(lambda r: r.route.request_mirror_policies.add(cluster="shadow")),
        f"{R3}.route.request_mirror_policies is not supported",
    ),
    (
        "backoff without base",
        lambda: _with_route(
            lambda r: r.route.retry_policy.CopyFrom(
                rc.RetryPolicy(
                    retry_on="unavailable", retry_back_off=rc.RetryPolicy.RetryBackOff(max_interval=seconds(1))
                )
            )
        ),
        f"{R3}.route.retry_policy.retry_back_off.base_interval must be set and greater than 0",
    ),
    (
        "backoff max below base",
        lambda: _with_route(
            lambda r: r.route.retry_policy.CopyFrom(
                rc.RetryPolicy(
                    retry_on="unavailable",
                    retry_back_off=rc.RetryPolicy.RetryBackOff(base_interval=seconds(1), max_interval=seconds(0.5)),
                )
            )
        ),
        f"{R3}.route.retry_policy.retry_back_off.max_interval (0.5s) is less than base_interval (1s)",
    ),
    (
        "negative timeout",
        lambda: _with_route(lambda r: r.route.timeout.CopyFrom(duration_pb2.Duration(seconds=-1))),
        f"{R3}.route.timeout: negative duration -1.0s",
    ),
]


@pytest.mark.parametrize(("build", "message"), [(b, m) for _, b, m in REFUSALS], ids=[n for n, _, _ in REFUSALS])
def test_refusals_name_the_field(build: Callable[[], route_pb2.RouteConfiguration], message: str) -> None:
    with pytest.raises(DecodeError) as caught:
        decode_route_configuration(build())
    assert str(caught.value).startswith(message)


def test_virtual_host_and_configuration_refusals() -> None:
    no_domains = route_pb2.RouteConfiguration(name="n", virtual_hosts=[rc.VirtualHost(name="h", routes=[route()])])
    with pytest.raises(DecodeError, match=r"^virtual_hosts\[0\]: domains is empty$"):
        decode_route_configuration(no_domains)
    with pytest.raises(DecodeError, match=r"^virtual_hosts\[0\]: require_tls is not supported$"):
        decode_route_configuration(config(route(), require_tls=rc.VirtualHost.ALL))
    headers = [base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key="k", value="v"))]
    with pytest.raises(DecodeError, match=r"^virtual_hosts\[0\]: request_headers_to_add is not supported$"):
        decode_route_configuration(config(route(), request_headers_to_add=headers))
    top = config(route())
    top.request_headers_to_remove.append("k")
    with pytest.raises(DecodeError, match=r"^request_headers_to_remove is not supported$"):
        decode_route_configuration(top)
