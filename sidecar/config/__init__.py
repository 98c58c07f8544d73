"""Sidecar configuration: bootstrap (agent.yaml) and, later, xDS snapshots."""
