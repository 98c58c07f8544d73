"""Policy: the YAML kinds users write, their validation, and the versioned store.

model.py defines TrafficPolicy, AccessPolicy and AgentConfig; validate.py
checks documents (alone, as a set, against the registry) with file:line:
field.path issues; store.py keeps every version of the policy set in SQLite.
The xDS translation (control_plane.translate) reads a PolicySet from here.
"""

from control_plane.policy.model import (
    KINDS,
    AccessPolicy,
    AgentConfig,
    Policy,
    PolicyRef,
    TrafficPolicy,
    policy_from_dict,
    render_yaml,
)
from control_plane.policy.store import ChangeResult, PolicySet, PolicyStore, PolicyStoreError, VersionInfo
from control_plane.policy.validate import (
    PolicyDocument,
    RegistryView,
    ValidationReport,
    load_documents,
    read_documents,
    validate_documents,
    validate_paths,
)

__all__ = [
    "KINDS",
    "AccessPolicy",
    "AgentConfig",
    "ChangeResult",
    "Policy",
    "PolicyDocument",
    "PolicyRef",
    "PolicySet",
    "PolicyStore",
    "PolicyStoreError",
    "RegistryView",
    "TrafficPolicy",
    "ValidationReport",
    "VersionInfo",
    "load_documents",
    "policy_from_dict",
    "read_documents",
    "render_yaml",
    "validate_documents",
    "validate_paths",
]
