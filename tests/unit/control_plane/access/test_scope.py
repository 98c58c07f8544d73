"""Team scope: a scoped operator changes only its teams' agents' policies, judged from the registry."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from control_plane.access.scope import ScopeError, TeamDirectory, check_scope
from control_plane.policy.model import Policy, policy_from_dict

RESEARCHER = "research.v1.Researcher"


@dataclass(frozen=True)
class Instance:
    agent: str
    team: str
    services: tuple[str, ...] = ()


DIRECTORY = TeamDirectory.from_instances(
    [
        Instance("researcher", "research", (RESEARCHER,)),
        Instance("researcher", "research", (RESEARCHER,)),
        Instance("scholar", "research", (RESEARCHER,)),
        Instance("writer", "writing", ("writing.v1.Writer",)),
        Instance("librarian", "writing", (RESEARCHER,)),
        Instance("loner", ""),
    ]
)


def policy(kind: str, name: str, spec: dict[str, Any]) -> Policy:
    return policy_from_dict({"apiVersion": "agentmesh.io/v1", "kind": kind, "metadata": {"name": name}, "spec": spec})


def config(target: str) -> Policy:
    return policy("AgentConfig", f"{target}-config", {"target": target, "values": {"model": "small"}})


def refused(teams: tuple[str, ...], *policies: Policy) -> ScopeError:
    with pytest.raises(ScopeError) as caught:
        check_scope(teams, policies, DIRECTORY)
    return caught.value


def test_the_directory_knows_teams_and_implementations():
    assert DIRECTORY.agent_teams["researcher"] == frozenset({"research"})
    assert DIRECTORY.agent_teams["loner"] == frozenset()
    assert DIRECTORY.implementations[RESEARCHER] == frozenset({"researcher", "scholar", "librarian"})


def test_an_unscoped_credential_may_change_anything():
    mesh_wide = policy("AccessPolicy", "mesh", {"target": "*", "default_action": "deny"})

    check_scope((), [config("writer"), config("nobody"), mesh_wide], DIRECTORY)


def test_a_scoped_credential_may_change_its_teams_agents():
    check_scope(("research",), [config("researcher"), config("scholar")], DIRECTORY)
    check_scope(("research", "writing"), [config("researcher"), config("writer")], DIRECTORY)
    check_scope(("research",), [], DIRECTORY)


def test_other_teams_agents_are_out_of_scope_and_named():
    error = refused(("research",), config("researcher"), config("writer"))

    assert error.subjects == ("writer",)
    assert str(error) == (
        "a credential scoped to team research may change only the policies of its agents; "
        "out of scope: writer (team writing; AgentConfig/writer-config)"
    )


def test_an_agent_of_unknown_team_is_refused_saying_so():
    error = refused(("research",), config("ghost"), config("loner"))

    assert error.subjects == ("ghost", "loner")
    assert "ghost (team unknown: the agent is not registered; AgentConfig/ghost-config)" in str(error)
    assert "loner (team unknown: the agent registered without a team; AgentConfig/loner-config)" in str(error)


def test_a_mesh_wide_policy_needs_an_unscoped_credential():
    mesh_wide = policy("AccessPolicy", "mesh", {"target": "*", "default_action": "deny"})

    error = refused(("research", "writing"), mesh_wide)

    assert error.subjects == ("*",)
    assert "mesh-wide: needs a credential not scoped to teams; AccessPolicy/mesh" in str(error)
    assert "teams research, writing may change only the policies of their agents" in str(error)


def test_a_service_target_needs_every_implementation_in_scope():
    split = policy(
        "TrafficPolicy",
        "search-split",
        {"target": RESEARCHER, "split": [{"agent": "researcher", "weight": 50}, {"agent": "scholar", "weight": 50}]},
    )

    error = refused(("research",), split)

    assert error.subjects == ("librarian",)
    check_scope(("research", "writing"), [split], DIRECTORY)


def test_agents_named_in_a_service_split_count_too():
    split = policy(
        "TrafficPolicy",
        "writing-split",
        {"target": "writing.v1.Writer", "split": [{"agent": "writer", "weight": 90}, {"agent": "ghost", "weight": 10}]},
    )

    assert refused(("writing",), split).subjects == ("ghost",)


def test_a_service_nobody_implements_has_no_known_team():
    timeout = policy("TrafficPolicy", "nobody", {"target": "nobody.v1.Nobody", "timeout": "5s"})

    error = refused(("research",), timeout)

    assert error.subjects == ("nobody.v1.Nobody",)
    assert "no registered agent implements it, so its team is unknown" in str(error)


def test_each_subject_is_named_once_with_every_document():
    access = policy("AccessPolicy", "writer-access", {"target": "writer", "default_action": "allow"})

    error = refused(("research",), config("writer"), access, config("writer"))

    assert [(item.subject, item.documents) for item in error.out_of_scope] == [
        ("writer", ("AgentConfig/writer-config", "AccessPolicy/writer-access"))
    ]
