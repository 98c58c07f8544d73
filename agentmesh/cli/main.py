"""`agentmesh`: one command for every AgentMesh process and operation."""

from __future__ import annotations

import click

from agentmesh import __version__
from agentmesh.cli.agents import agents
from agentmesh.cli.ca import ca
from agentmesh.cli.call import call
from agentmesh.cli.check import check
from agentmesh.cli.control_plane import control_plane
from agentmesh.cli.credential import credential, whoami
from agentmesh.cli.identity_agent import identity_agent
from agentmesh.cli.inject import inject_command
from agentmesh.cli.policy import policy
from agentmesh.cli.proxy_status import proxy_status
from agentmesh.cli.sidecar import sidecar
from agentmesh.cli.stat import stat, top
from agentmesh.cli.stubs import stubs
from agentmesh.cli.token import token
from agentmesh.cli.up import up


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="agentmesh")
def cli() -> None:
    """AgentMesh: a service mesh for networks of AI agents.

    Wrap an untouched agent with a sidecar that serves its typed gRPC
    contract, validates every message, checks its health and routes its
    calls to other agents.
    """


cli.add_command(control_plane)
cli.add_command(identity_agent)
cli.add_command(sidecar)
cli.add_command(stubs)
cli.add_command(up)
cli.add_command(policy)
cli.add_command(agents)
cli.add_command(proxy_status)
cli.add_command(check)
cli.add_command(inject_command)
cli.add_command(stat)
cli.add_command(top)
cli.add_command(call)
cli.add_command(token)
cli.add_command(ca)
cli.add_command(credential)
cli.add_command(whoami)
