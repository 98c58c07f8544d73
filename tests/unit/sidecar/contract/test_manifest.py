"""build_manifest: identity, services, descriptors, one skill per method, SLOs."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import descriptor_pool

from agentmesh.protoc import compile_descriptor_set
from agentmesh.v1 import manifest_pb2
from sidecar.config.bootstrap import DEFAULT_AVAILABILITY, AgentIdentity, Slo
from sidecar.contract import ContractSet
from sidecar.contract.manifest import build_manifest

SCRIBE_PROTO = Path(__file__).parents[1] / "admin" / "testdata" / "scribe.proto"
IDENTITY = AgentIdentity(
    name="scribe", version="v2", team="writers", description="Writes short texts.", labels={"tier": "gold"}
)


@pytest.fixture(scope="module")
def fds():
    return compile_descriptor_set([SCRIBE_PROTO])


@pytest.fixture(scope="module")
def contract(fds) -> ContractSet:
    return ContractSet.compile(fds)


def skills_by_method(manifest: manifest_pb2.Manifest) -> dict[str, manifest_pb2.Skill]:
    return {skill.method: skill for skill in manifest.skills}


def test_identity_services_and_labels(contract: ContractSet) -> None:
    manifest = build_manifest(contract, IDENTITY)

    assert (manifest.name, manifest.version, manifest.team) == ("scribe", "v2", "writers")
    assert manifest.description == "Writes short texts."
    assert list(manifest.services) == ["scribe.v1.Scribe"]
    assert dict(manifest.labels) == {"tier": "gold"}


def test_descriptors_are_the_contract_set_and_resolve_every_skill(contract: ContractSet) -> None:
    manifest = build_manifest(contract, IDENTITY)

    assert manifest.descriptors == contract.descriptor_set
    pool = descriptor_pool.DescriptorPool()
    for file in manifest.descriptors.file:
        pool.Add(file)
    for skill in manifest.skills:
        assert pool.FindMessageTypeByName(skill.input_type).full_name == skill.input_type
        assert pool.FindMessageTypeByName(skill.output_type).full_name == skill.output_type


def test_one_skill_per_method_with_metadata(contract: ContractSet) -> None:
    skills = skills_by_method(build_manifest(contract, IDENTITY))

    assert list(skills) == ["/scribe.v1.Scribe/Draft", "/scribe.v1.Scribe/StreamDraft", "/scribe.v1.Scribe/Lookup"]
    draft = skills["/scribe.v1.Scribe/Draft"]
    assert (draft.input_type, draft.output_type) == ("scribe.v1.DraftRequest", "scribe.v1.DraftResponse")
    assert draft.default_timeout.ToNanoseconds() == 30 * 10**9
    assert list(draft.tags) == ["writing", "llm"]
    assert draft.cost.per_call == 0.5
    assert draft.cost.per_1k_output_tokens == 2
    assert draft.description == "Drafts a paragraph on a topic."
    assert not draft.server_streaming
    assert not draft.idempotent

    stream = skills["/scribe.v1.Scribe/StreamDraft"]
    assert stream.server_streaming
    assert stream.output_type == "scribe.v1.DraftChunk"
    assert not stream.HasField("default_timeout")
    assert not stream.HasField("cost")

    lookup = skills["/scribe.v1.Scribe/Lookup"]
    assert lookup.idempotent  # from idempotency_level = NO_SIDE_EFFECTS


def test_description_falls_back_to_the_rpc_comment(contract: ContractSet) -> None:
    skills = skills_by_method(build_manifest(contract, IDENTITY))

    assert skills["/scribe.v1.Scribe/StreamDraft"].description == "Streams a draft token by token."
    assert skills["/scribe.v1.Scribe/Lookup"].description == ""


def test_agent_yaml_overrides_reach_the_manifest(fds) -> None:
    contract = ContractSet.compile(
        fds,
        overrides={
            "/scribe.v1.Scribe/Lookup": {"description": "Finds synonyms.", "tags": ("thesaurus",), "timeout": 2.5}
        },
    )
    lookup = skills_by_method(build_manifest(contract, IDENTITY))["/scribe.v1.Scribe/Lookup"]

    assert lookup.description == "Finds synonyms."
    assert list(lookup.tags) == ["thesaurus"]
    assert lookup.default_timeout.ToNanoseconds() == 2_500_000_000


def test_default_slo_is_availability_only(contract: ContractSet) -> None:
    manifest = build_manifest(contract, IDENTITY)

    assert manifest.slo.availability == DEFAULT_AVAILABILITY == 0.99
    assert not manifest.slo.HasField("latency_threshold")
    assert manifest.slo.latency_target == 0


def test_given_slo_with_latency_objective(contract: ContractSet) -> None:
    slo = Slo(availability=0.995, latency_threshold=2.5, latency_target=0.9)
    manifest = build_manifest(contract, IDENTITY, slo=slo)

    assert manifest.slo.availability == 0.995
    assert manifest.slo.latency_threshold.ToNanoseconds() == 2_500_000_000
    assert manifest.slo.latency_target == 0.9


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"availability": 0}, "availability"),
        ({"availability": 1.5}, "availability"),
        ({"latency_threshold": 1.0}, "both"),
        ({"latency_target": 0.9}, "both"),
        ({"latency_threshold": -1.0, "latency_target": 0.9}, "latency_threshold"),
        ({"latency_threshold": 1.0, "latency_target": 0}, "latency_target"),
    ],
)
def test_invalid_slo_is_refused(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Slo(**kwargs)


def test_manifest_round_trips_on_the_wire(contract: ContractSet) -> None:
    manifest = build_manifest(contract, IDENTITY)

    assert manifest_pb2.Manifest.FromString(manifest.SerializeToString()) == manifest
