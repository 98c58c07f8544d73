from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

from agentmesh.protoc import ProtoCompileError, compile_descriptor_set
from sidecar.contract import ContractSet, HttpRule
from sidecar.errors import UnknownMethod
from tests.unit.sidecar.contract.conftest import SHOP_PROTO


def test_methods_are_compiled_once_with_their_metadata(shop: ContractSet) -> None:
    assert shop.services == ("shop.v1.Shop",)
    assert set(shop.methods) == {"/shop.v1.Shop/GetItem", "/shop.v1.Shop/Order", "/shop.v1.Shop/Watch"}
    get = shop.method("/shop.v1.Shop/GetItem")
    assert get.skill.idempotent  # from the standard idempotency_level option
    assert get.http_rule == HttpRule("GET", "/v1/items/{id}", "")
    order = shop.method("shop.v1.Shop.Order")  # dotted form is accepted too
    assert order.skill.timeout == 1.5 and order.skill.tags == ("orders",) and not order.skill.idempotent
    assert shop.method("shop.v1.Shop/Watch").server_streaming


def test_overrides_from_agent_yaml_win(shop: ContractSet) -> None:
    contract = ContractSet.compile(
        shop.descriptor_set, overrides={"/shop.v1.Shop/Order": {"idempotent": True, "timeout": 9.0}}
    )
    skill = contract.method("/shop.v1.Shop/Order").skill
    assert skill.idempotent and skill.timeout == 9.0 and skill.tags == ("orders",)


def test_unknown_method_names_the_services(shop: ContractSet) -> None:
    with pytest.raises(UnknownMethod, match=r"not part of the contract \(services: shop.v1.Shop\)"):
        shop.method("/shop.v1.Shop/Refund")


def test_unknown_service_is_a_clear_error(shop: ContractSet) -> None:
    with pytest.raises(ValueError, match=r"service .shop\.v1\.Nope. is not defined"):
        ContractSet.compile(shop.descriptor_set, services=["shop.v1.Nope"])


def test_a_contract_without_services_is_refused() -> None:
    empty = descriptor_pb2.FileDescriptorSet()
    empty.file.add(name="empty.proto", package="x", syntax="proto3")
    with pytest.raises(ValueError, match="defines no service"):
        ContractSet.compile(empty)


def test_protoc_errors_carry_file_and_line(tmp_path: Path) -> None:
    broken = tmp_path / "broken.proto"
    broken.write_text('syntax = "proto3";\nmessage X {\n  strng a = 1;\n}\n')
    with pytest.raises(ProtoCompileError, match=r"broken.proto:3:3: \"strng\" is not defined"):
        compile_descriptor_set([broken])


def test_descriptor_set_includes_imports() -> None:
    names = [f.name for f in compile_descriptor_set([SHOP_PROTO]).file]
    assert "buf/validate/validate.proto" in names and "agentmesh/v1/options.proto" in names
    assert names[-1] == "shop.proto"
