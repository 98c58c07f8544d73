"""The `agentmesh` command line: thin click commands over the project's packages."""
