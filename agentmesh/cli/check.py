"""`agentmesh check`: lint the stored policy against the live registry and agent health."""

from __future__ import annotations

import click

from agentmesh.cli._client import AdminClient, connection_options
from agentmesh.cli._output import EXIT_FAILED, emit, message_data, output_option, table
from agentmesh.v1 import control_pb2


def _human(findings: list[control_pb2.Finding]) -> str:
    if not findings:
        return "No problems found."
    errors = sum(1 for f in findings if f.severity == "error")
    warnings = len(findings) - errors
    rows = [(f.severity, f.subject, f.message) for f in findings]
    summary = f"{errors} error{'s' if errors != 1 else ''}, {warnings} warning{'s' if warnings != 1 else ''}"
    return "\n".join([table(("severity", "subject", "message"), rows), "", summary])


@click.command()
@output_option
@connection_options
def check(output: str) -> None:
    """Check stored policy against the registered agents and their health.

    \b
    Errors:
      - a split or route names a version with no registered instance
      - a policy names a method or service a registered agent does not serve
      - an agent whose instances are all unhealthy
      - a capability (service) with no healthy implementation
    Warnings:
      - a policy for an agent (or caller) that is not registered
      - a version of a healthy agent with no healthy instance

    \b
    Examples:
      agentmesh check
      agentmesh check -o json

    Exit codes: 0 no errors (warnings allowed), 1 at least one error (or
    the call was refused), 3 control plane unreachable.
    """
    with AdminClient.from_context() as client:
        response = client.call("Check", control_pb2.CheckRequest())
    findings = list(response.findings)
    emit(output, message_data(response), lambda: _human(findings))
    if any(f.severity == "error" for f in findings):
        click.get_current_context().exit(EXIT_FAILED)
