"""Fixtures for the admin endpoint tests: the compiled scribe contract and its manifest."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentmesh.protoc import compile_descriptor_set
from agentmesh.v1 import manifest_pb2
from sidecar.config.bootstrap import AgentIdentity
from sidecar.contract import ContractSet
from sidecar.contract.manifest import build_manifest

SCRIBE_PROTO = Path(__file__).parent / "testdata" / "scribe.proto"


@pytest.fixture(scope="session")
def scribe_contract() -> ContractSet:
    return ContractSet.compile(compile_descriptor_set([SCRIBE_PROTO]))


@pytest.fixture
def scribe_manifest(scribe_contract: ContractSet) -> manifest_pb2.Manifest:
    identity = AgentIdentity(
        name="scribe", version="v2", team="writers", description="Writes short texts.", labels={"tier": "gold"}
    )
    return build_manifest(scribe_contract, identity)
