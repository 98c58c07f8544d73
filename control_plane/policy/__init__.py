"""Policy: the YAML kinds users write, their validation, and the versioned store.

model.py defines TrafficPolicy, AccessPolicy and AgentConfig; validate.py
checks documents (alone, as a set, against the registry) with file:line:
field.path issues; store.py (imported on its own, `control_plane.policy.store`,
so the pure translation never loads sqlite3) keeps every version of the
policy set.
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
    "Policy",
    "PolicyDocument",
    "PolicyRef",
    "RegistryView",
    "TrafficPolicy",
    "ValidationReport",
    "load_documents",
    "policy_from_dict",
    "read_documents",
    "render_yaml",
    "validate_documents",
    "validate_paths",
]
