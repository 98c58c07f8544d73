"""Renders the capability manifest as an A2A Agent Card (JSON).

Served at `/.well-known/agent-card.json` so A2A tooling can discover the
agent. The card follows the A2A 0.3 `AgentCard` shape (`url` plus
`preferredTransport: GRPC`); every skill is one RPC method, identified by its
full method path. A2A skills declare only media types, so the typed part of
the contract travels in a card extension (`capabilities.extensions`, URI
`CONTRACT_EXTENSION_URI`): the services, each skill's input and output message
types, and where the full descriptors are (`agentmesh.v1.Agent/GetManifest`).
"""

from __future__ import annotations

from google.protobuf import json_format

from agentmesh.v1 import manifest_pb2

A2A_PROTOCOL_VERSION = "0.3.0"
CONTRACT_EXTENSION_URI = "urn:agentmesh:contract:v1"
JSON_MODE = "application/json"


def agent_card(manifest: manifest_pb2.Manifest, *, url: str) -> dict[str, object]:
    """The A2A Agent Card of `manifest`; `url` is the sidecar's inbound address as callers reach it."""
    streaming = any(skill.server_streaming for skill in manifest.skills)
    card: dict[str, object] = {
        "protocolVersion": A2A_PROTOCOL_VERSION,
        "name": manifest.name,
        "description": manifest.description or f"Agent {manifest.name}",
        "url": url,
        "preferredTransport": "GRPC",
        "version": manifest.version,
        # A2A requires the provider's url; the agent's own address is the one we know.
        "provider": {"organization": manifest.team, "url": url},
        "capabilities": {
            "streaming": streaming,
            "pushNotifications": False,
            "extensions": [_contract_extension(manifest)],
        },
        "defaultInputModes": [JSON_MODE],
        "defaultOutputModes": [JSON_MODE],
        "skills": [_skill(skill) for skill in manifest.skills],
    }
    return card


def _skill(skill: manifest_pb2.Skill) -> dict[str, object]:
    service, _, name = skill.method.lstrip("/").partition("/")
    return {
        "id": skill.method,
        "name": name,
        "description": skill.description or f"{name} of {service}",
        "tags": list(skill.tags),
        "inputModes": [JSON_MODE],
        "outputModes": [JSON_MODE],
    }


def _contract_extension(manifest: manifest_pb2.Manifest) -> dict[str, object]:
    skills: list[dict[str, object]] = []
    for skill in manifest.skills:
        entry: dict[str, object] = {
            "id": skill.method,
            "inputType": skill.input_type,
            "outputType": skill.output_type,
            "serverStreaming": skill.server_streaming,
            "idempotent": skill.idempotent,
        }
        if skill.HasField("default_timeout"):
            entry["defaultTimeout"] = json_format.MessageToDict(skill.default_timeout)
        if skill.HasField("cost"):
            entry["cost"] = json_format.MessageToDict(skill.cost)
        skills.append(entry)
    params: dict[str, object] = {
        "agent": manifest.name,
        "version": manifest.version,
        "team": manifest.team,
        "services": list(manifest.services),
        "skills": skills,
        "manifest": "/agentmesh.v1.Agent/GetManifest",
    }
    if manifest.labels:
        params["labels"] = dict(sorted(manifest.labels.items()))
    if manifest.HasField("slo"):
        params["slo"] = json_format.MessageToDict(manifest.slo)
    return {
        "uri": CONTRACT_EXTENSION_URI,
        "description": "AgentMesh typed contract: gRPC services and protobuf message types of every skill",
        "required": False,
        "params": params,
    }
