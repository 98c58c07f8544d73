"""The registry of running agent instances, fed by sidecars and read by the translator."""

from control_plane.registry.instances import AgentInstance, RegistryError, UnknownInstanceError
from control_plane.registry.registry import (
    DEFAULT_HEARTBEAT_TTL,
    ChangeKind,
    Registry,
    RegistryChange,
    RegistryListener,
)

__all__ = [
    "DEFAULT_HEARTBEAT_TTL",
    "AgentInstance",
    "ChangeKind",
    "Registry",
    "RegistryChange",
    "RegistryError",
    "RegistryListener",
    "UnknownInstanceError",
]
