"""The registry as the translation sees it: plain, frozen data.

The registry (control_plane.registry) adapts its live state to `MeshView`
once per translation, so translation depends on no registry class and tests
build views by hand. A MeshView also satisfies
`control_plane.policy.validate.RegistryView`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

DEFAULT_ZONE = "default"


@dataclass(frozen=True)
class InstanceView:
    """One running instance of an agent version: its sidecar's inbound address, health and transport."""

    # host:port of the sidecar's inbound gRPC listener; an IP literal, or 'localhost'.
    address: str
    healthy: bool = True
    # Locality zone; instances without one share DEFAULT_ZONE.
    zone: str = ""
    # The sidecar accepts mutual TLS (InstanceReport.mtls): callers use TLS when every instance of the version does.
    mtls: bool = False
    # The SPIFFE ID the sidecar reported for its certificate; "" when none.
    spiffe_id: str = ""


@dataclass(frozen=True)
class AgentView:
    """A registered agent: its versions with their instances, and its contract."""

    name: str
    team: str = "default"
    # version -> instances; a version with no instances is still a (registered) cluster.
    versions: Mapping[str, tuple[InstanceView, ...]] = field(default_factory=dict)
    # Full service names it implements ('research.v1.Researcher'), over all versions.
    services: tuple[str, ...] = ()
    # Full method names ('research.v1.Researcher/Search'), over all versions.
    methods: tuple[str, ...] = ()
    # Methods whose contract marks them idempotent in every version; only these are retried by default.
    idempotent_methods: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        object.__setattr__(self, "versions", MappingProxyType(dict(self.versions)))

    @property
    def instances(self) -> tuple[InstanceView, ...]:
        """Every instance of every version."""
        return tuple(i for version in sorted(self.versions) for i in self.versions[version])

    @property
    def live_versions(self) -> tuple[str, ...]:
        """Versions with at least one instance, sorted."""
        return tuple(v for v in sorted(self.versions) if self.versions[v])


@dataclass(frozen=True)
class MeshView:
    """Every registered agent by name."""

    agents: Mapping[str, AgentView] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "agents", MappingProxyType(dict(sorted(self.agents.items()))))

    @classmethod
    def of(cls, *agents: AgentView) -> MeshView:
        return cls({agent.name: agent for agent in agents})

    @property
    def services(self) -> tuple[str, ...]:
        """Every service some agent implements, sorted."""
        return tuple(sorted({s for agent in self.agents.values() for s in agent.services}))

    def implementers(self, service: str) -> tuple[AgentView, ...]:
        """Agents implementing `service`, by name."""
        return tuple(agent for agent in self.agents.values() if service in agent.services)
