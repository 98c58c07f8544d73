from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from sidecar.contract import ContractSet, MessageChecker
from sidecar.errors import ContractViolation


@pytest.fixture
def checker() -> MessageChecker:
    return MessageChecker()


def violation(call: Callable[[], object]) -> ContractViolation:
    with pytest.raises(ContractViolation) as info:
        call()
    return info.value


def test_valid_bytes_parse(shop: ContractSet, checker: MessageChecker) -> None:
    method = shop.method("/shop.v1.Shop/Order")
    request = method.request_class(lines=[{"sku": "a", "quantity": 2}])
    parsed = checker.parse(method, request.SerializeToString(), side="request")
    assert parsed == request


def test_rule_violations_name_nested_fields(shop: ContractSet, checker: MessageChecker) -> None:
    method = shop.method("/shop.v1.Shop/Order")
    request = method.request_class(lines=[{"sku": "a", "quantity": 2}, {"sku": "", "quantity": 0}])
    error = violation(lambda: checker.parse(method, request.SerializeToString(), side="request"))
    assert error.reason == "rule_violation" and error.side == "request"
    assert {v.field for v in error.violations} == {"lines[1].sku", "lines[1].quantity"}
    assert error.code.name == "INVALID_ARGUMENT"


def test_unknown_fields_are_found_at_any_depth(shop: ContractSet, checker: MessageChecker) -> None:
    method = shop.method("/shop.v1.Shop/Order")
    order: Any = method.request_class(lines=[{"sku": "a", "quantity": 1}])
    line = order.lines[0].SerializeToString()
    nested_unknown = line + b"\xf8\x01\x01"  # field 31 inside the Line
    # OrderRequest.lines (field 1, length-delimited) holding a Line with an unknown field,
    # plus an unknown field 15 at the top level.
    data = b"\x0a" + bytes([len(nested_unknown)]) + nested_unknown + b"\x78\x01"
    error = violation(lambda: checker.parse(method, data, side="request"))
    assert error.reason == "unknown_field"
    assert {v.field for v in error.violations} == {"#15", "lines[0].#31"}


def test_unknown_fields_inside_map_values(shop: ContractSet, checker: MessageChecker) -> None:
    method = shop.method("/shop.v1.Shop/Order")
    request: Any = method.request_class(lines=[{"sku": "a", "quantity": 1}])
    request.by_name["x"].sku = "b"
    request.by_name["x"].quantity = 1
    request.by_name["x"].MergeFromString(b"\xf8\x01\x01")  # unknown field 31 in the map value
    error = violation(lambda: checker.parse(method, request.SerializeToString(), side="request"))
    assert [v.field for v in error.violations] == ["by_name['x'].#31"]


def test_malformed_bytes(shop: ContractSet, checker: MessageChecker) -> None:
    error = violation(lambda: checker.parse(shop.method("/shop.v1.Shop/Order"), b"\x0a\x05ab", side="request"))
    assert error.reason == "malformed"


def test_response_violations_are_internal(shop: ContractSet, checker: MessageChecker) -> None:
    method = shop.method("/shop.v1.Shop/GetItem")
    error = violation(lambda: checker.from_json(method, b'{"id": "x", "price": -1}', side="response"))
    assert error.side == "response" and error.code.name == "INTERNAL"
    assert [v.field for v in error.violations] == ["price"]


@pytest.mark.parametrize(
    ("payload", "reason", "field"),
    [
        (b'{"id": "x", "colour": "red"}', "unknown_field", "colour"),
        (b'{"id": 5}', "wrong_type", "id"),
        (b"not json", "invalid_json", None),
        (b"[1, 2]", "invalid_json", None),
    ],
)
def test_json_problems(
    shop: ContractSet, checker: MessageChecker, payload: bytes, reason: str, field: str | None
) -> None:
    error = violation(lambda: checker.from_json(shop.method("/shop.v1.Shop/GetItem"), payload, side="response"))
    assert error.reason == reason
    if field is not None:
        assert error.violations[0].field == field


def test_json_accepts_proto_and_json_names(shop: ContractSet, checker: MessageChecker) -> None:
    method = shop.method("/shop.v1.Shop/Order")
    a = checker.from_json(method, {"lines": [{"sku": "a", "quantity": 1}], "by_name": {}}, side="request")
    b = checker.from_json(method, {"lines": [{"sku": "a", "quantity": 1}], "byName": {}}, side="request")
    assert a == b
