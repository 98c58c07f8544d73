"""google.api.http transcoding: template compilation and request mapping, without a server."""

from __future__ import annotations

import dataclasses
import json

import pytest

from sidecar.contract import HttpRule, MethodContract
from sidecar.errors import ContractViolation
from sidecar.upstream._transcode import HttpRoute
from tests.unit.sidecar.upstream.conftest import method, request


def with_rule(name: str, verb: str, template: str, body: str = "") -> MethodContract:
    return dataclasses.replace(method(name), http_rule=HttpRule(verb, template, body))


def build(contract: MethodContract, fields: dict[str, object], *, proto_names: bool = True) -> tuple[str, object]:
    target, body = HttpRoute.for_method(contract).build(request(contract.name, fields), proto_names=proto_names)
    return target, None if body is None else json.loads(body)


def test_connect_route() -> None:
    route = HttpRoute.for_method(method("Echo"))
    assert (route.verb, route.connect) == ("POST", True)
    assert build(method("Echo"), {"name": "x"}) == ("/testing.things.v1.Things/Echo", {"name": "x"})
    assert build(method("Echo"), {}) == ("/testing.things.v1.Things/Echo", {})


@pytest.mark.parametrize(
    ("template", "error"),
    [
        ("v1/things", "must start with '/'"),
        ("/v1/*/things", r"wildcard '\*' outside a variable"),
        ("/v1/{name", "unbalanced '{'"),
        ("/v1/name}", "unbalanced '}'"),
        ("/v1/{na{me}}", "nested"),
        ("/v1/{missing}", "has no field 'missing'"),
        ("/v1/{filter.nope}", "has no field 'nope'"),
        ("/v1/{name.deeper}", "has no field 'deeper'"),
        ("/v1/{fields}", "'fields' is repeated"),
        ("/v1/{filter}", "a message field cannot be a path value"),
        ("/v1/{name=things/x*}", "invalid pattern"),
        ("/v1/{1name}", "invalid field path"),
        ("/v1/things:", "invalid verb"),
        ("/v1//things", "invalid segment"),
    ],
)
def test_unusable_templates_are_refused(template: str, error: str) -> None:
    with pytest.raises(ValueError, match=error) as caught:
        HttpRoute.for_method(with_rule("GetThing", "GET", template))
    assert "/testing.things.v1.Things/GetThing" in str(caught.value)


def test_unknown_body_field_is_refused() -> None:
    with pytest.raises(ValueError, match="body field 'nope'"):
        HttpRoute.for_method(with_rule("GetThing", "POST", "/v1/things", "nope"))


def test_nested_path_variable_and_timestamp_value() -> None:
    contract = with_rule("GetThing", "GET", "/v1/{filter.id}/at/{as_of}")
    target, body = build(contract, {"filter": {"id": "f/1", "count": 3}, "as_of": "2024-01-02T03:04:05Z"})
    assert target == "/v1/f%2F1/at/2024-01-02T03%3A04%3A05Z?filter.count=3"
    assert body is None


def test_double_star_matches_any_depth() -> None:
    contract = with_rule("GetThing", "GET", "/v1/{name=**}")
    assert build(contract, {"name": "a/b c/d"})[0] == "/v1/a/b%20c/d"
    prefixed = with_rule("GetThing", "GET", "/v1/{name=things/**}")
    assert build(prefixed, {"name": "things"})[0] == "/v1/things"
    with pytest.raises(ContractViolation):
        build(prefixed, {"name": "other/x"})


def test_literal_pattern_must_match_exactly() -> None:
    contract = with_rule("GetThing", "GET", "/v1/{name=latest}")
    assert build(contract, {"name": "latest"})[0] == "/v1/latest"
    with pytest.raises(ContractViolation, match=r"\{name=latest\}"):
        build(contract, {"name": "oldest"})


@pytest.mark.parametrize(
    ("fields", "query"),
    [
        ({"ratio": 0.1}, "ratio=0.1"),
        ({"ratio": "NaN"}, "ratio=NaN"),
        ({"ratio": "-Infinity"}, "ratio=-Infinity"),
        ({"kind": 7}, "kind=7"),
        ({"token": "+/8="}, "token=-_8%3D"),
        ({"verbose": False}, ""),
    ],
)
def test_scalar_query_values(fields: dict[str, object], query: str) -> None:
    target, _ = build(with_rule("GetThing", "GET", "/v1/things"), fields)
    assert target == "/v1/things" + (f"?{query}" if query else "")


def test_body_field_of_scalar_kind() -> None:
    contract = with_rule("GetThing", "POST", "/v1/things/{name}", "fields")
    assert build(contract, {"name": "t", "fields": ["a", "b"], "verbose": True}) == (
        "/v1/things/t?verbose=true",
        ["a", "b"],
    )
    flag = with_rule("GetThing", "POST", "/v1/things/{name}", "verbose")
    assert build(flag, {"name": "t"}) == ("/v1/things/t", False)


def test_body_message_field_when_unset_is_empty() -> None:
    contract = with_rule("CreateThing", "POST", "/v1/{parent=projects/*}/things", "thing")
    assert build(contract, {"parent": "projects/p"}) == ("/v1/projects/p/things", {})


def test_json_names_for_body_and_query() -> None:
    contract = with_rule("CreateThing", "POST", "/v1/things", "thing")
    assert build(contract, {"thing": {"display_title": "T"}, "request_id": "r"}, proto_names=False) == (
        "/v1/things?requestId=r",
        {"displayTitle": "T"},
    )
