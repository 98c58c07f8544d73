"""`agentmesh check`: lints the stored policy set against the live registry.

Validation at apply time (control_plane.policy.validate) judges documents
against the registry as it was then; agents come and go afterwards, so a
policy that was fine can stop matching anything, and an agent can lose every
healthy instance. This module re-runs the registry checks on the stored set
and adds health findings, as plain data:

- every registry problem of a stored policy (split versions with no
  registered instance, methods or services a registered agent does not serve:
  errors; agents that are not registered: warnings), see docs/policy.md;
- an agent whose instances are all unhealthy: error;
- a capability (service) with no healthy implementation: error;
- a version of an otherwise healthy agent with no healthy instance: warning.

Pure: reads policies and a `MeshView`; no grpc, no store.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from control_plane.policy.model import Policy
from control_plane.policy.validate import dotted, registry_problems
from control_plane.translate.view import AgentView, MeshView

Severity = Literal["error", "warning"]


@dataclass(frozen=True, order=True)
class Finding:
    """One problem: how bad, what it is about ('TrafficPolicy/canary', 'agent/researcher'), and why."""

    severity: Severity
    subject: str
    message: str


def check_mesh(policies: Iterable[Policy], mesh: MeshView) -> list[Finding]:
    """Every finding for `policies` against `mesh`, errors first, then by subject."""
    findings: list[Finding] = []
    for policy in policies:
        for problem in registry_problems(policy, mesh):
            where = dotted(problem.path)
            message = f"{where}: {problem.reason}" if where else problem.reason
            findings.append(Finding(problem.severity, str(policy.ref), message))
    for agent in mesh.agents.values():
        findings += _agent_health(agent)
    for service in mesh.services:
        implementers = mesh.implementers(service)
        if not any(instance.healthy for agent in implementers for instance in agent.instances):
            names = ", ".join(agent.name for agent in implementers)
            findings.append(
                Finding("error", f"service/{service}", f"no healthy implementation (implemented by: {names})")
            )
    return sorted(findings, key=lambda f: (f.severity != "error", f.subject, f.message))


def _agent_health(agent: AgentView) -> list[Finding]:
    subject = f"agent/{agent.name}"
    instances = agent.instances
    if not instances:
        return []
    if not any(instance.healthy for instance in instances):
        return [Finding("error", subject, _unhealthy(len(instances)))]
    findings = []
    for version in agent.live_versions:
        members = agent.versions[version]
        if not any(instance.healthy for instance in members):
            findings.append(Finding("warning", subject, f"version {version}: {_unhealthy(len(members))}"))
    return findings


def _unhealthy(instances: int) -> str:
    return "its only instance is unhealthy" if instances == 1 else f"all {instances} instances are unhealthy"
