"""Adapts the live registry to the translator's frozen `MeshView`, once per translation.

Translation (`control_plane/translate/`) reads plain data and knows no registry
class; this is the one place that turns registered instances (and the
manifests their sidecars sent) into that data: agents with their versions,
instances (address, health, zone, mTLS and reported SPIFFE ID), services, methods and the methods every
version marks idempotent.
"""

from __future__ import annotations

from collections.abc import Iterable

from control_plane.registry.instances import AgentInstance
from control_plane.registry.registry import Registry
from control_plane.translate.view import AgentView, InstanceView, MeshView

DEFAULT_TEAM = "default"


def mesh_view(registry: Registry) -> MeshView:
    """A frozen view of every registered agent, for one translation."""
    by_agent: dict[str, list[AgentInstance]] = {}
    for instance in registry.instances():
        by_agent.setdefault(instance.agent, []).append(instance)
    return MeshView.of(*(_agent_view(name, instances) for name, instances in by_agent.items()))


def _agent_view(name: str, instances: list[AgentInstance]) -> AgentView:
    versions: dict[str, tuple[InstanceView, ...]] = {}
    for instance in instances:
        view = InstanceView(
            address=instance.address,
            healthy=instance.healthy,
            zone=instance.zone,
            mtls=instance.mtls,
            spiffe_id=instance.spiffe_id,
        )
        versions[instance.version] = (*versions.get(instance.version, ()), view)
    skills = _skills_by_version(instances)
    methods = sorted({method for per_version in skills.values() for method in per_version})
    idempotent = frozenset(
        method
        for method in methods
        if all(per_version[method] for per_version in skills.values() if method in per_version)
    )
    return AgentView(
        name=name,
        team=next((i.team for i in instances if i.team), DEFAULT_TEAM),
        versions=versions,
        services=tuple(sorted({service for i in instances for service in i.services})),
        methods=tuple(methods),
        idempotent_methods=idempotent,
    )


def _skills_by_version(instances: Iterable[AgentInstance]) -> dict[str, dict[str, bool]]:
    """version -> full method name ('pkg.Service/Method') -> idempotent, from the first readable manifest."""
    skills: dict[str, dict[str, bool]] = {}
    for instance in instances:
        if instance.version in skills:
            continue
        manifest = instance.decoded_manifest()
        if manifest is not None:
            skills[instance.version] = {skill.method.lstrip("/"): skill.idempotent for skill in manifest.skills}
    return skills
