"""Repeated headers: matchers see every value, as Envoy's do."""

from __future__ import annotations

from sidecar.config.snapshot import HeaderMatcher
from sidecar.inbound.server import headers_of


def test_a_repeated_header_matches_when_any_value_matches() -> None:
    headers = headers_of([("X-Tenant", "gamma"), ("x-tenant", "beta"), ("x-other", "1")])
    assert headers["x-other"] == "1"
    assert HeaderMatcher("x-tenant", exact="beta").matches(headers)
    assert HeaderMatcher("x-tenant", prefix="gam").matches(headers)
    assert not HeaderMatcher("x-tenant", exact="beta", invert=True).matches(headers)
    assert not HeaderMatcher("x-tenant", exact="delta").matches(headers)


def test_a_comma_inside_one_value_is_not_a_list() -> None:
    headers = headers_of([("x-tenant", "gamma,beta")])
    assert not HeaderMatcher("x-tenant", exact="beta").matches(headers)
    assert HeaderMatcher("x-tenant", exact="gamma,beta").matches(headers)
