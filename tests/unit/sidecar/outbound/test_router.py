"""Route match: Envoy's virtual host selection by domain, then the first matching route."""

from __future__ import annotations

import re

import pytest

from sidecar.config.snapshot import HeaderMatcher, Route, RouteAction, RouteTable, VirtualHost, WeightedCluster
from sidecar.errors import NoRoute
from sidecar.outbound.router import select_route, select_virtual_host


def action(cluster: str) -> RouteAction:
    return RouteAction(clusters=(WeightedCluster(cluster, 1),), timeout=None, retry=None)


def host(name: str, *domains: str) -> VirtualHost:
    return VirtualHost(name, domains, (Route(f"{name}/all", action(name), prefix="/"),))


TABLE = RouteTable(
    "mixed",
    (
        host("default", "*"),
        host("prefix-short", "api*"),
        host("prefix-long", "api.internal*"),
        host("suffix-short", "*.com"),
        host("suffix-long", "*.example.com"),
        host("suffix-bare", "*planner"),
        host("exact", "api.example.com"),
        host("researcher", "researcher", "researcher:*"),
    ),
)


@pytest.mark.parametrize(
    ("authority", "expected"),
    [
        ("api.example.com", "exact"),  # exact beats every wildcard that also matches
        ("API.Example.COM", "exact"),  # host matching ignores case
        ("www.example.com", "suffix-long"),  # the longest suffix wins
        ("www.other.com", "suffix-short"),
        ("api.internal.net", "prefix-long"),  # the longest prefix wins
        ("api-gateway", "prefix-short"),
        ("api.internal.com", "suffix-short"),  # a suffix wildcard beats a prefix wildcard
        ("myplanner", "suffix-bare"),  # `*planner` is a suffix wildcard without a dot
        ("planner", "default"),  # a wildcard stands for at least one character
        ("api", "default"),
        ("researcher", "researcher"),
        ("researcher:15001", "researcher"),  # `name:*`: any port
        ("researcher2", "default"),
        ("", "default"),
    ],
)
def test_virtual_host_selection_follows_envoy(authority: str, expected: str) -> None:
    selected = select_virtual_host(TABLE, authority)
    assert selected is not None
    assert selected.name == expected


def test_no_default_host_means_no_virtual_host() -> None:
    table = RouteTable("agent/researcher", (host("researcher", "researcher", "researcher:*"),))
    assert select_virtual_host(table, "writer") is None
    with pytest.raises(NoRoute) as caught:
        select_route(table, "writer", "/research.v1.Researcher/Search", {})
    message = caught.value.message
    assert "agent/researcher" in message and "'writer'" in message and "/research.v1.Researcher/Search" in message


def test_first_matching_route_wins_in_order() -> None:
    routes = (
        Route(
            "pin/v2",
            action("agent/researcher/v2"),
            prefix="/",
            headers=(HeaderMatcher("x-agentmesh-version", exact="v2"),),
        ),
        Route("search", action("search-cluster"), path="/research.v1.Researcher/Search"),
        Route("regex", action("regex-cluster"), path_regex=re.compile(r"/research\.v1\.Researcher/S.*")),
        Route("default", action("agent/researcher/v1"), prefix="/"),
    )
    table = RouteTable("agent/researcher", (VirtualHost("agent/researcher", ("researcher",), routes),))

    def route_for(path: str, headers: dict[str, str] | None = None) -> str:
        return select_route(table, "researcher", path, headers or {}).name

    assert route_for("/research.v1.Researcher/Search") == "search"
    assert route_for("/research.v1.Researcher/Search", {"x-agentmesh-version": "v2"}) == "pin/v2"
    assert route_for("/research.v1.Researcher/Summon") == "regex"
    assert route_for("/research.v1.Researcher/Other") == "default"


def test_no_matching_route_names_table_host_and_path() -> None:
    routes = (Route("search", action("c"), path="/research.v1.Researcher/Search"),)
    table = RouteTable("service/research.v1.Researcher", (VirtualHost("vh", ("research.v1.Researcher",), routes),))
    with pytest.raises(NoRoute) as caught:
        select_route(table, "research.v1.Researcher", "/research.v1.Researcher/Summon", {})
    assert caught.value.code.name == "UNAVAILABLE"
    message = caught.value.message
    assert "service/research.v1.Researcher" in message
    assert "vh" in message
    assert "/research.v1.Researcher/Summon" in message


def test_first_virtual_host_wins_among_equal_matches() -> None:
    table = RouteTable("t", (host("first", "*"), host("second", "*")))
    selected = select_virtual_host(table, "anything")
    assert selected is not None and selected.name == "first"


def test_domains_match_whatever_their_case() -> None:
    table = RouteTable(
        "t", (host("wild", "*.Example.COM"), host("exact", "Researcher"), host("prefix", "Writer:*"), host("any", "*"))
    )
    for authority, expected in [
        ("researcher", "exact"),
        ("RESEARCHER", "exact"),
        ("api.example.com", "wild"),
        ("writer:15001", "prefix"),
        ("other", "any"),
    ]:
        selected = select_virtual_host(table, authority)
        assert selected is not None and selected.name == expected, authority


def test_an_exact_domain_of_a_later_host_beats_an_earlier_wildcard() -> None:
    table = RouteTable("t", (host("first", "research*"), host("second", "researcher"), host("third", "researcher")))
    selected = select_virtual_host(table, "researcher")
    assert selected is not None and selected.name == "second"
