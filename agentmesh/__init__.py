"""AgentMesh: a service mesh and observability stack for networks of AI agents."""

__version__ = "0.1.0"
