"""AccessPolicy validation: the mesh-wide policy (target '*'), team names certificates can carry, reserved names."""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest

from control_plane.policy.model import AccessPolicy
from control_plane.policy.validate import check_policy_set, parse_documents, validate_documents, validate_paths
from tests.unit.control_plane.policy.test_validate import REGISTRY, messages, write

MESH_WIDE = """\
apiVersion: agentmesh.io/v1
kind: AccessPolicy
metadata:
  name: {name}
spec:
  target: '*'
  default_action: deny
  rules:
    - name: no-strangers
      action: deny
      from:
        agents: [stranger]
"""


def test_a_mesh_wide_policy_is_valid_and_has_no_registered_target_to_miss() -> None:
    documents, issues = parse_documents(MESH_WIDE.format(name="mesh-default"), "mesh.yaml")
    assert issues == []
    (document,) = documents
    assert isinstance(document.policy, AccessPolicy) and document.policy.spec.mesh_wide
    report = validate_documents(documents, registry=REGISTRY)
    assert report.errors == ()
    # 'stranger' is not registered: a warning, as for any rule; '*' itself is no unknown agent.
    assert messages(report.warnings) == [
        "mesh.yaml:12: spec.rules[0].from.agents[0]: agent 'stranger' is not registered; "
        "the rule applies once it registers"
    ]


def test_at_most_one_mesh_wide_policy_in_the_files(tmp_path: Path) -> None:
    first = write(tmp_path, "a.yaml", MESH_WIDE.format(name="mesh-a"))
    second = write(tmp_path, "b.yaml", MESH_WIDE.format(name="mesh-b"))
    _, report = validate_paths([first, second])
    assert messages(report.errors) == [
        f"{second}:6: spec.target: the mesh already has a mesh-wide AccessPolicy, AccessPolicy/mesh-a ({first}:1): "
        "at most one AccessPolicy targets '*'; merge them into one document"
    ]


def test_at_most_one_mesh_wide_policy_against_the_stored_set() -> None:
    stored = AccessPolicy.model_validate({"metadata": {"name": "old-mesh"}, "spec": {"target": "*"}})
    documents, _ = parse_documents(MESH_WIDE.format(name="new-mesh"), "mesh.yaml")
    report = validate_documents(documents, stored=[stored])
    assert messages(report.errors) == [
        "mesh.yaml:6: spec.target: the mesh already has a mesh-wide AccessPolicy, AccessPolicy/old-mesh "
        "(stored AccessPolicy/old-mesh): at most one AccessPolicy targets '*'; merge them into one document"
    ]
    # Replacing the stored one under its own name is no conflict.
    documents, _ = parse_documents(MESH_WIDE.format(name="old-mesh"), "mesh.yaml")
    assert validate_documents(documents, stored=[stored]).errors == ()
    again = AccessPolicy.model_validate({"metadata": {"name": "second"}, "spec": {"target": "*"}})
    assert len(check_policy_set([stored, again])) == 1


def test_a_per_agent_policy_and_the_mesh_wide_one_coexist() -> None:
    per_agent = AccessPolicy.model_validate({"metadata": {"name": "r"}, "spec": {"target": "researcher"}})
    mesh = AccessPolicy.model_validate({"metadata": {"name": "m"}, "spec": {"target": "*"}})
    assert check_policy_set([per_agent, mesh]) == []


def test_mesh_wide_operations_no_agent_serves_are_warnings() -> None:
    documents, issues = parse_documents(
        """\
apiVersion: agentmesh.io/v1
kind: AccessPolicy
metadata: {name: mesh}
spec:
  target: '*'
  rules:
    - action: allow
      to:
        services: [research.v1.Researcher, ghost.v1.Ghost]
        methods: [planning.v1.Planner/Plan, planning.v1.Planner/Vanish, ghost.v1.Ghost/Boo]
""",
        "mesh.yaml",
    )
    assert issues == []
    report = validate_documents(documents, registry=REGISTRY)
    assert report.errors == ()
    assert messages(report.warnings) == [
        "mesh.yaml:9: spec.rules[0].to.services[1]: no registered agent serves ghost.v1.Ghost; "
        "the rule applies once one does",
        "mesh.yaml:10: spec.rules[0].to.methods[1]: no registered agent serves planning.v1.Planner/Vanish; "
        "the rule applies once one does",
        "mesh.yaml:10: spec.rules[0].to.methods[2]: no registered agent serves ghost.v1.Ghost/Boo; "
        "the rule applies once one does",
    ]


def test_team_names_a_certificate_cannot_carry_are_errors() -> None:
    documents, issues = parse_documents(
        """\
apiVersion: agentmesh.io/v1
kind: AccessPolicy
metadata: {name: researcher-access}
spec:
  target: researcher
  rules:
    - action: allow
      from:
        teams: [planning, Research_Data, '*']
""",
        "access.yaml",
    )
    assert issues == []
    report = validate_documents(documents)
    assert messages(report.errors) == [
        "access.yaml:9: spec.rules[0].from.teams[1]: team 'Research_Data' can never match a caller: "
        "certificates name teams in lowercase letters, digits and '-' (at most 63)"
    ]


def test_builtin_is_a_reserved_access_policy_name() -> None:
    documents, _ = parse_documents(
        "apiVersion: agentmesh.io/v1\nkind: AccessPolicy\nmetadata:\n  name: builtin\nspec: {target: researcher}\n",
        "access.yaml",
    )
    assert messages(validate_documents(documents).errors) == [
        "access.yaml:4: metadata.name: 'builtin' is reserved for the built-in access rules; pick another name"
    ]


@pytest.mark.parametrize("target", ["**", "Researcher", "research.v1.Researcher", ""])
def test_target_is_an_agent_or_star(target: str) -> None:
    with pytest.raises(pydantic.ValidationError) as caught:
        AccessPolicy.model_validate({"metadata": {"name": "a"}, "spec": {"target": target}})
    assert "is not a valid agent name (lowercase letters, digits and '-') or '*'" in str(caught.value)
