"""`agentmesh agents`: the agents registered with the control plane, their versions, instances and skills."""

from __future__ import annotations

from datetime import UTC, datetime

import click

from agentmesh.cli._client import AdminClient, connection_options
from agentmesh.cli._output import NONE, CliError, age, emit, message_data, note, output_option, table, when
from agentmesh.v1 import control_pb2, manifest_pb2


def _instances(agent: control_pb2.AgentStatus) -> str:
    """healthy/total instances."""
    every = [i for version in agent.versions for i in version.instances]
    return f"{sum(1 for i in every if i.healthy)}/{len(every)}"


def _row(agent: control_pb2.AgentStatus) -> tuple[str, str, str, str, str]:
    return (
        agent.name,
        agent.team,
        ",".join(v.version for v in agent.versions),
        _instances(agent),
        ",".join(agent.services),
    )


@click.group(invoke_without_command=True)
@output_option
@connection_options
@click.pass_context
def agents(ctx: click.Context, output: str) -> None:
    """List the agents registered with the control plane.

    INSTANCES is healthy/total over every version. `agents describe NAME`
    shows one agent's instances and skills.

    \b
    Examples:
      agentmesh agents
      agentmesh agents -o json
      agentmesh agents describe researcher

    Exit codes: 0 listed, 1 refused, 3 control plane unreachable.
    """
    if ctx.invoked_subcommand is not None:
        return
    with AdminClient.from_context() as client:
        response = client.call("ListAgents", control_pb2.ListAgentsRequest())
    if output == "table" and not response.agents:
        note("No agents registered.")
        return
    emit(
        output,
        message_data(response),
        lambda: table(("name", "team", "versions", "instances", "services"), map(_row, response.agents)),
    )


def _timeout(skill: manifest_pb2.Skill) -> str:
    if not skill.HasField("default_timeout"):
        return NONE
    seconds = skill.default_timeout.ToTimedelta().total_seconds()
    return f"{seconds:g}s"


def _describe(agent: control_pb2.AgentStatus, now: datetime) -> str:
    lines = [
        f"Name:       {agent.name}",
        f"Team:       {agent.team or NONE}",
        f"Services:   {', '.join(agent.services) or NONE}",
        f"Instances:  {_instances(agent)} healthy",
        "Versions:",
    ]
    rows = [
        (
            version.version,
            instance.instance_id,
            instance.address,
            instance.zone,
            "healthy" if instance.healthy else "unhealthy",
            f"{age(when(instance.last_report), now=now)} ago",
        )
        for version in agent.versions
        for instance in version.instances
    ]
    lines.append(table(("version", "instance", "address", "zone", "health", "last report"), rows, indent="  "))
    lines.append("Skills:")
    if agent.skills:
        skill_rows = [
            (
                skill.method,
                "yes" if skill.idempotent else "no",
                _timeout(skill),
                "yes" if skill.server_streaming else "no",
                ",".join(skill.tags),
            )
            for skill in agent.skills
        ]
        lines.append(table(("method", "idempotent", "timeout", "streaming", "tags"), skill_rows, indent="  "))
    else:
        lines.append(f"  {NONE}")
    return "\n".join(lines)


@agents.command()
@click.argument("name")
@output_option
@connection_options
def describe(name: str, output: str) -> None:
    """Show one agent: versions, instances with health, and skills.

    Skills come from the manifest of the most recently registered instance:
    method, idempotent (only idempotent skills are retried by default),
    default timeout, streaming and capability tags.

    \b
    Example:
      agentmesh agents describe researcher

    Exit codes: 0 shown, 1 not registered or refused, 3 unreachable.
    """
    with AdminClient.from_context() as client:
        response = client.call("ListAgents", control_pb2.ListAgentsRequest(name=name))
    if not response.agents:
        raise CliError(f"agent {name!r} is not registered")
    agent = response.agents[0]
    emit(output, message_data(agent), lambda: _describe(agent, datetime.now(UTC)))
