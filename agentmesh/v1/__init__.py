"""Generated stubs for proto/agentmesh/v1 (python -m agentmesh.codegen)."""
