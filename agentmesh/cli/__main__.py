"""`python -m agentmesh.cli` runs the `agentmesh` command."""

from agentmesh.cli.main import cli

cli()
