"""The compiled shop contract shared by the contract tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentmesh.protoc import compile_descriptor_set
from sidecar.contract import ContractSet

SHOP_PROTO = Path(__file__).parent / "testdata" / "shop.proto"


@pytest.fixture(scope="session")
def shop() -> ContractSet:
    return ContractSet.compile(compile_descriptor_set([SHOP_PROTO]))
