"""agentmesh.protoc: protoc in this process or in a child interpreter gives the same answers."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentmesh.protoc import ProtoCompileError, compile_descriptor_set
from tests.unit.sidecar.contract.conftest import SHOP_PROTO


def test_isolated_compile_gives_the_same_descriptor_set() -> None:
    here = compile_descriptor_set([SHOP_PROTO])
    child = compile_descriptor_set([SHOP_PROTO], isolated=True)

    assert child == here


def test_isolated_compile_errors_carry_file_and_line(tmp_path: Path) -> None:
    broken = tmp_path / "broken.proto"
    broken.write_text('syntax = "proto3";\nmessage X {\n  strng a = 1;\n}\n')

    with pytest.raises(ProtoCompileError, match=r"broken.proto:3:3: \"strng\" is not defined"):
        compile_descriptor_set([broken], isolated=True)


def test_isolated_compile_names_a_missing_import(tmp_path: Path) -> None:
    lonely = tmp_path / "lonely.proto"
    lonely.write_text('syntax = "proto3";\nimport "nowhere/gone.proto";\n')

    with pytest.raises(ProtoCompileError, match=r"nowhere/gone\.proto"):
        compile_descriptor_set([lonely], isolated=True)
