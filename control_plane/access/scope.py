"""Team scope: which policy changes an operator limited to some teams may make.

A scoped credential may change (apply, delete, roll back) only documents
whose targets are agents of its teams, judged against the registry at the
time of the change, for the document as stored before and as it is after
(moving a document to another target needs both). A target is:

- an agent: its team is the one its instances registered with; an agent
  that is not registered, or registered without a team, has an unknown team
  and is refused, with a message saying so;
- a service (a capability): every registered agent implementing it, plus
  every agent named in its splits; a service nobody implements is refused;
- `*` (mesh-wide): never in a team's scope; it needs an unscoped credential.

The check is pure: `TeamDirectory` is a frozen copy of who belongs to which
team, taken on the registry's thread; `check_scope` runs wherever the change
is computed (inside the policy store's write transaction, so a rollback or a
prune is judged on exactly the documents it changes).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final, Protocol

from control_plane.policy.model import Policy, TrafficPolicy, is_service_name

# The target of a mesh-wide policy.
MESH_WIDE: Final = "*"


class _Registered(Protocol):
    @property
    def agent(self) -> str: ...
    @property
    def team(self) -> str: ...
    @property
    def services(self) -> tuple[str, ...]: ...


@dataclass(frozen=True)
class TeamDirectory:
    """Registered agents' teams (empty: registered without one) and each service's implementing agents."""

    agent_teams: Mapping[str, frozenset[str]]
    implementations: Mapping[str, frozenset[str]]

    @classmethod
    def from_instances(cls, instances: Iterable[_Registered]) -> TeamDirectory:
        teams: dict[str, set[str]] = {}
        implementations: dict[str, set[str]] = {}
        for instance in instances:
            found = teams.setdefault(instance.agent, set())
            if instance.team:
                found.add(instance.team)
            for service in instance.services:
                implementations.setdefault(service, set()).add(instance.agent)
        return cls(
            MappingProxyType({agent: frozenset(t) for agent, t in teams.items()}),
            MappingProxyType({service: frozenset(a) for service, a in implementations.items()}),
        )


@dataclass(frozen=True)
class OutOfScope:
    """One target outside the scope, why, and the documents that name it."""

    subject: str
    reason: str
    documents: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.subject} ({self.reason}; {', '.join(self.documents)})"


class ScopeError(Exception):
    """A change touches targets outside the credential's teams."""

    def __init__(self, teams: Collection[str], out_of_scope: Iterable[OutOfScope]) -> None:
        self.teams = tuple(sorted(teams))
        self.out_of_scope = tuple(out_of_scope)
        plural = "s" if len(self.teams) != 1 else ""
        super().__init__(
            f"a credential scoped to team{plural} {', '.join(self.teams)} may change only the policies of "
            f"{'their' if plural else 'its'} agents; out of scope: {'; '.join(map(str, self.out_of_scope))}"
        )

    @property
    def subjects(self) -> tuple[str, ...]:
        """The out-of-scope agents (and services, or '*')."""
        return tuple(item.subject for item in self.out_of_scope)


def _agents_of(policy: Policy, directory: TeamDirectory) -> tuple[set[str], set[str]]:
    """(agents the policy governs, services that resolve to no agent)."""
    target = policy.spec.target
    if not is_service_name(target):
        return {target}, set()
    agents = set(directory.implementations.get(target, ()))
    if isinstance(policy, TrafficPolicy):
        splits = [policy.spec.split, *(route.split for route in policy.spec.routes)]
        agents |= {backend.agent for split in splits for backend in split if backend.agent}
    return agents, set() if agents else {target}


def check_scope(teams: Collection[str], policies: Iterable[Policy], directory: TeamDirectory) -> None:
    """Raises ScopeError unless every policy's targets are agents of `teams`; no teams means every team."""
    if not teams:
        return
    allowed = frozenset(teams)
    refused: dict[str, tuple[str, list[str]]] = {}

    def refuse(subject: str, reason: str, policy: Policy) -> None:
        entry = refused.setdefault(subject, (reason, []))
        if str(policy.ref) not in entry[1]:
            entry[1].append(str(policy.ref))

    for policy in policies:
        if policy.spec.target == MESH_WIDE:
            refuse(MESH_WIDE, "mesh-wide: needs a credential not scoped to teams", policy)
            continue
        agents, unresolved = _agents_of(policy, directory)
        for service in sorted(unresolved):
            refuse(service, "no registered agent implements it, so its team is unknown", policy)
        for agent in sorted(agents):
            known = directory.agent_teams.get(agent)
            if known is None:
                refuse(agent, "team unknown: the agent is not registered", policy)
            elif not known:
                refuse(agent, "team unknown: the agent registered without a team", policy)
            elif not known <= allowed:
                refuse(agent, f"team {', '.join(sorted(known - allowed))}", policy)
    if refused:
        raise ScopeError(
            allowed, (OutOfScope(subject, reason, tuple(docs)) for subject, (reason, docs) in sorted(refused.items()))
        )
