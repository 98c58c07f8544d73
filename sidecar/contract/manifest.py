"""Builds the agent's capability manifest (`agentmesh.v1.Manifest`).

The manifest is what the sidecar says about its agent: identity (from
agent.yaml), the services it implements with their descriptors, one skill per
RPC method with the skill metadata compiled into the `ContractSet`, and SLOs.
It is built once per contract (not per request) and served by
`Agent.GetManifest`, the admin endpoint (`/manifest`, and as an A2A Agent
Card) and registered with the control plane.
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2

from agentmesh.v1 import manifest_pb2
from sidecar.config.bootstrap import AgentIdentity, Slo
from sidecar.contract.compiled import ContractSet, MethodContract

# FileDescriptorProto field numbers, for reading comments out of source_code_info.
_SERVICE_FIELD = 6
_METHOD_FIELD = 2


def slo_proto(slo: Slo) -> manifest_pb2.Slo:
    proto = manifest_pb2.Slo(availability=slo.availability)
    if slo.latency_threshold is not None and slo.latency_target is not None:
        proto.latency_threshold.FromNanoseconds(round(slo.latency_threshold * 1e9))
        proto.latency_target = slo.latency_target
    return proto


def build_manifest(contract: ContractSet, identity: AgentIdentity, *, slo: Slo | None = None) -> manifest_pb2.Manifest:
    """The manifest of `identity` serving `contract`; skills in contract order.

    A skill without a description in its options or agent.yaml takes the
    leading comment of its `rpc` in the .proto, when the descriptor set keeps
    source info.
    """
    manifest = manifest_pb2.Manifest(
        name=identity.name,
        version=identity.version,
        team=identity.team,
        description=identity.description,
        services=contract.services,
        labels=identity.labels,
        slo=slo_proto(slo or Slo()),
    )
    manifest.descriptors.CopyFrom(contract.descriptor_set)
    comments = _method_comments(contract.descriptor_set)
    for method in contract.methods.values():
        manifest.skills.append(_skill(method, comments.get(method.path, "")))
    return manifest


def _skill(method: MethodContract, comment: str) -> manifest_pb2.Skill:
    meta = method.skill
    skill = manifest_pb2.Skill(
        method=method.path,
        input_type=method.input.full_name,
        output_type=method.output.full_name,
        server_streaming=method.server_streaming,
        idempotent=meta.idempotent,
        tags=meta.tags,
        description=meta.description or comment,
    )
    if meta.timeout is not None:
        skill.default_timeout.FromNanoseconds(round(meta.timeout * 1e9))
    if meta.cost is not None:
        skill.cost.CopyFrom(meta.cost)
    return skill


def _method_comments(fds: descriptor_pb2.FileDescriptorSet) -> dict[str, str]:
    """'/pkg.Service/Method' -> the method's leading comment, for every file with source info."""
    comments: dict[str, str] = {}
    for file in fds.file:
        if not file.service or not file.HasField("source_code_info"):
            continue
        by_path = {tuple(loc.path): loc.leading_comments for loc in file.source_code_info.location}
        for s, service in enumerate(file.service):
            full = f"{file.package}.{service.name}" if file.package else service.name
            for m, method in enumerate(service.method):
                text = by_path.get((_SERVICE_FIELD, s, _METHOD_FIELD, m), "")
                if text.strip():
                    comments[f"/{full}/{method.name}"] = " ".join(text.split())
    return comments
