"""agent_card: the manifest rendered in the A2A AgentCard shape, with the contract extension."""

from __future__ import annotations

import json
from typing import Any

from agentmesh.v1 import manifest_pb2
from sidecar.admin.agent_card import A2A_PROTOCOL_VERSION, CONTRACT_EXTENSION_URI, agent_card

URL = "127.0.0.1:15006"
# Required members of A2A 0.3 AgentCard and AgentSkill.
CARD_REQUIRED = {
    "protocolVersion",
    "name",
    "description",
    "url",
    "version",
    "capabilities",
    "defaultInputModes",
    "defaultOutputModes",
    "skills",
}
SKILL_REQUIRED = {"id", "name", "description", "tags"}


def render(manifest: manifest_pb2.Manifest) -> dict[str, Any]:
    # Through JSON: the card must serialize, and tests read it as a client would.
    card: dict[str, Any] = json.loads(json.dumps(agent_card(manifest, url=URL)))
    return card


def test_card_has_the_a2a_shape(scribe_manifest: manifest_pb2.Manifest) -> None:
    card = render(scribe_manifest)

    assert card.keys() >= CARD_REQUIRED
    assert card["protocolVersion"] == A2A_PROTOCOL_VERSION
    assert (card["name"], card["version"], card["url"]) == ("scribe", "v2", URL)
    assert card["description"] == "Writes short texts."
    assert card["preferredTransport"] == "GRPC"
    assert card["provider"]["organization"] == "writers"
    assert card["defaultInputModes"] == card["defaultOutputModes"] == ["application/json"]
    assert card["capabilities"]["streaming"] is True


def test_one_skill_per_method(scribe_manifest: manifest_pb2.Manifest) -> None:
    skills = {skill["id"]: skill for skill in render(scribe_manifest)["skills"]}

    assert list(skills) == ["/scribe.v1.Scribe/Draft", "/scribe.v1.Scribe/StreamDraft", "/scribe.v1.Scribe/Lookup"]
    for skill in skills.values():
        assert skill.keys() >= SKILL_REQUIRED
        assert skill["inputModes"] == skill["outputModes"] == ["application/json"]
    draft = skills["/scribe.v1.Scribe/Draft"]
    assert draft["name"] == "Draft"
    assert draft["description"] == "Drafts a paragraph on a topic."
    assert draft["tags"] == ["writing", "llm"]
    # No description anywhere: a generated one, since A2A requires it.
    assert skills["/scribe.v1.Scribe/Lookup"]["description"] == "Lookup of scribe.v1.Scribe"


def test_contract_extension_carries_services_and_message_types(scribe_manifest: manifest_pb2.Manifest) -> None:
    (extension,) = render(scribe_manifest)["capabilities"]["extensions"]

    assert extension["uri"] == CONTRACT_EXTENSION_URI
    assert extension["required"] is False
    params = extension["params"]
    assert params["services"] == ["scribe.v1.Scribe"]
    assert params["labels"] == {"tier": "gold"}
    assert params["slo"] == {"availability": 0.99}
    types = {s["id"]: (s["inputType"], s["outputType"], s["serverStreaming"]) for s in params["skills"]}
    assert types == {
        "/scribe.v1.Scribe/Draft": ("scribe.v1.DraftRequest", "scribe.v1.DraftResponse", False),
        "/scribe.v1.Scribe/StreamDraft": ("scribe.v1.DraftRequest", "scribe.v1.DraftChunk", True),
        "/scribe.v1.Scribe/Lookup": ("scribe.v1.LookupRequest", "scribe.v1.LookupResponse", False),
    }
    draft = params["skills"][0]
    assert draft["defaultTimeout"] == "30s"
    assert draft["cost"] == {"perCall": 0.5, "per1kOutputTokens": 2.0}


def test_no_streaming_skill_means_no_streaming_capability() -> None:
    manifest = manifest_pb2.Manifest(
        name="lookup",
        version="v1",
        team="search",
        services=["pkg.Lookup"],
        skills=[manifest_pb2.Skill(method="/pkg.Lookup/Find", input_type="pkg.Q", output_type="pkg.A")],
    )
    card = render(manifest)

    assert card["capabilities"]["streaming"] is False
    assert card["description"] == "Agent lookup"
    assert "slo" not in card["capabilities"]["extensions"][0]["params"]


def test_empty_manifest_still_renders() -> None:
    card = render(manifest_pb2.Manifest(name="bare"))

    assert card["skills"] == []
    assert card["capabilities"]["streaming"] is False
    assert card["capabilities"]["extensions"][0]["params"]["services"] == []
