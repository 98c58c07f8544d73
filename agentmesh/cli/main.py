"""`agentmesh`: one command for every AgentMesh process and operation."""

from __future__ import annotations

import click

from agentmesh import __version__
from agentmesh.cli.sidecar import sidecar
from agentmesh.cli.stubs import stubs
from agentmesh.cli.up import up


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="agentmesh")
def cli() -> None:
    """AgentMesh: a service mesh for networks of AI agents.

    Wrap an untouched agent with a sidecar that serves its typed gRPC
    contract, validates every message, checks its health and routes its
    calls to other agents.
    """


cli.add_command(sidecar)
cli.add_command(stubs)
cli.add_command(up)
