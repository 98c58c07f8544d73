"""Configuration shared by every AgentMesh process: YAML with positions, durations."""

from agentmesh.config.source import ConfigError, ConfigIssue, load_yaml_model, parse_duration

__all__ = ["ConfigError", "ConfigIssue", "load_yaml_model", "parse_duration"]
