"""Grafana dashboards of AgentMesh, written as Python with grafana-foundation-sdk.

Each dashboard module (`mesh_overview`, `agent`, `control_plane`, `traces`) builds one
dashboard from the canonical metric names of ARCHITECTURE.md §5;
`python -m dashboards.generate` renders them to `dashboards/generated/*.json`,
which Grafana loads through the file provider in `dashboards/provisioning/`.
"""
