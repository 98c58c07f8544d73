"""check_mesh: stored policy linted against a hand-built MeshView."""

from __future__ import annotations

from control_plane.api.check import Finding, check_mesh
from control_plane.policy.model import AccessPolicy, AgentConfig, TrafficPolicy
from control_plane.translate.view import AgentView, InstanceView, MeshView

SEARCH = "research.v1.Researcher"


def researcher(**versions: tuple[bool, ...]) -> AgentView:
    return AgentView(
        name="researcher",
        versions={
            version: tuple(InstanceView(f"10.0.0.{i}:1", healthy) for i, healthy in enumerate(health, 1))
            for version, health in versions.items()
        },
        services=(SEARCH,),
        methods=(f"{SEARCH}/Search",),
    )


def canary(*split: tuple[str, int], target: str = "researcher") -> TrafficPolicy:
    return TrafficPolicy.model_validate(
        {
            "metadata": {"name": "canary"},
            "spec": {"target": target, "split": [{"version": v, "weight": w} for v, w in split]},
        }
    )


def test_a_healthy_mesh_with_matching_policy_has_no_findings():
    mesh = MeshView.of(researcher(v1=(True, True), v2=(True,)))

    assert check_mesh([canary(("v1", 90), ("v2", 10))], mesh) == []


def test_a_split_version_without_instances_is_an_error():
    mesh = MeshView.of(researcher(v1=(True,)))

    findings = check_mesh([canary(("v1", 90), ("v2", 10))], mesh)

    assert findings == [
        Finding(
            "error",
            "TrafficPolicy/canary",
            "spec.split[1].version: version 'v2' of researcher is not registered (registered: v1)",
        )
    ]


def test_policies_for_unknown_agents_are_warnings():
    config = AgentConfig.model_validate({"metadata": {"name": "cfg"}, "spec": {"target": "ghost", "values": {}}})
    access = AccessPolicy.model_validate(
        {"metadata": {"name": "acl"}, "spec": {"target": "ghost", "rules": [{"action": "allow"}]}}
    )

    findings = check_mesh([config, access, canary(("v1", 100), target="ghost")], MeshView())

    assert [(f.severity, f.subject) for f in findings] == [
        ("warning", "AccessPolicy/acl"),
        ("warning", "AgentConfig/cfg"),
        ("warning", "TrafficPolicy/canary"),
    ]
    assert all("agent 'ghost' is not registered" in f.message for f in findings)


def test_an_agent_with_no_healthy_instance_and_its_orphaned_service_are_errors():
    mesh = MeshView.of(researcher(v1=(False, False)))

    assert check_mesh([], mesh) == [
        Finding("error", "agent/researcher", "all 2 instances are unhealthy"),
        Finding("error", f"service/{SEARCH}", "no healthy implementation (implemented by: researcher)"),
    ]


def test_a_service_with_one_healthy_implementation_is_fine():
    other = AgentView(name="fast", versions={"v1": (InstanceView("10.0.1.1:1", True),)}, services=(SEARCH,))
    mesh = MeshView.of(researcher(v1=(False,)), other)

    assert check_mesh([], mesh) == [Finding("error", "agent/researcher", "its only instance is unhealthy")]


def test_an_unhealthy_version_of_a_healthy_agent_is_a_warning():
    mesh = MeshView.of(researcher(v1=(True,), v2=(False, False)))

    assert check_mesh([], mesh) == [Finding("warning", "agent/researcher", "version v2: all 2 instances are unhealthy")]


def test_errors_come_before_warnings():
    mesh = MeshView.of(researcher(v1=(True,), v2=(False,)))

    findings = check_mesh([canary(("v1", 50), ("v3", 50))], mesh)

    assert [f.severity for f in findings] == ["error", "warning"]
