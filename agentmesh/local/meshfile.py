"""The mesh file (mesh.yaml): which agents to run locally, each with its sidecar, and how.

    control_plane: {listen: 127.0.0.1:15010, http: 127.0.0.1:18080}   # the embedded control plane
    policies: [policies/]                  # applied once every agent is up
    autoscale: {target_in_flight: 2, interval: 2s}
    agents:
      - name: researcher
        command: ["{python}", "agents/researcher/agent.py", "--port", "{port}"]
        sidecar: agents/researcher/agent.yaml
        env: {KEY: value}
        replicas: {min: 1, max: 3}
        mtls: permissive                   # strict (default: agent.yaml's identity.mode), permissive or off

Placeholders in `command` and `env` values: `{python}` the running
interpreter, `{port}` the replica's agent port, `{egress_http}` the URL of
the replica's sidecar HTTP egress, `{egress_grpc}` the host:port of its gRPC
egress, `{replica}` the replica's index. Paths are relative to the mesh
file. Validated like every other YAML file (file:line: field: reason).

Every sidecar runs with mutual TLS: up hands each one a join token
(agentmesh/local/identity.py). `mtls` picks the inbound mode of an entry:
`strict` accepts only mesh certificates, `permissive` also plaintext (for an
entry agent called from outside the mesh), `off` runs that sidecar without
an identity.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from agentmesh.config import load_yaml_model
from sidecar.config.bootstrap import Address, Seconds

PLACEHOLDERS = ("python", "port", "egress_http", "egress_grpc", "replica")
DEFAULT_CONTROL_PLANE_LISTEN = "127.0.0.1:15010"
DEFAULT_CONTROL_PLANE_HTTP = "127.0.0.1:18080"
DEFAULT_TARGET_IN_FLIGHT = 2.0
DEFAULT_AUTOSCALE_INTERVAL = 2.0
DEFAULT_SCALE_UP_CHECKS = 2
DEFAULT_SCALE_DOWN_CHECKS = 5

_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")
_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _base_dir(info: ValidationInfo) -> Path:
    return Path((info.context or {}).get("base_dir", Path.cwd()))


def _known_placeholders(text: str) -> str:
    unknown = sorted({name for name in _PLACEHOLDER.findall(text) if name not in PLACEHOLDERS})
    if unknown:
        known = ", ".join("{" + p + "}" for p in PLACEHOLDERS)
        raise ValueError(f"unknown placeholder {{{unknown[0]}}}: use one of {known}")
    return text


def substitute(text: str, values: Mapping[str, str]) -> str:
    """Replaces each `{name}` of `values` in `text`; other braces are left alone."""
    for name, value in values.items():
        text = text.replace("{" + name + "}", value)
    return text


class Replicas(_Strict):
    """How many copies of the agent (each with its own sidecar) run; autoscaling stays within min..max."""

    min: int = Field(default=1, ge=1, le=32)
    max: int = Field(default=1, ge=1, le=32)
    # Average inbound calls in flight per replica above which replicas are added; default: autoscale's.
    target_in_flight: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> Replicas:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) must not exceed max ({self.max})")
        return self


class MeshAgent(_Strict):
    """One agent entry: its command, its sidecar bootstrap, its environment and replica bounds."""

    name: str
    command: tuple[str, ...] = Field(min_length=1)
    sidecar: Path
    env: dict[str, str] = Field(default_factory=dict)
    replicas: Replicas = Replicas()
    # The inbound listener's mTLS mode; default: the agent.yaml's identity.mode (strict unless set).
    mtls: Literal["strict", "permissive", "off"] | None = None

    @field_validator("name")
    @classmethod
    def _label(cls, name: str) -> str:
        # It names log files and generated configs: keep it a DNS label like agent names.
        if not _NAME.match(name):
            raise ValueError(f"{name!r} is not a valid entry name: lowercase letters, digits and '-', at most 63")
        return name

    @field_validator("command")
    @classmethod
    def _command_placeholders(cls, command: tuple[str, ...]) -> tuple[str, ...]:
        for part in command:
            _known_placeholders(part)
        return command

    @field_validator("env")
    @classmethod
    def _env_placeholders(cls, env: dict[str, str]) -> dict[str, str]:
        for value in env.values():
            _known_placeholders(value)
        return env

    @field_validator("sidecar", mode="before")
    @classmethod
    def _relative(cls, value: object, info: ValidationInfo) -> Path:
        path = (_base_dir(info) / str(value)).resolve()
        if not path.is_file():
            raise ValueError(f"not found: {path}")
        return path

    @field_validator("replicas")
    @classmethod
    def _port_per_replica(cls, replicas: Replicas, info: ValidationInfo) -> Replicas:
        command = info.data.get("command") or ()
        if replicas.max > 1 and not any("{port}" in part for part in command):
            raise ValueError(
                f"max {replicas.max} needs '{{port}}' in the command: each replica's agent listens on its own port"
            )
        return replicas

    def argv(self, values: Mapping[str, str] | None = None) -> list[str]:
        """The command with `{python}` and the given placeholders replaced."""
        given = {"python": sys.executable, **(values or {})}
        return [substitute(part, given) for part in self.command]

    def environment(self, values: Mapping[str, str]) -> dict[str, str]:
        """The extra environment with the given placeholders replaced."""
        given = {"python": sys.executable, **values}
        return {key: substitute(value, given) for key, value in self.env.items()}


class ControlPlaneListen(_Strict):
    """Where the embedded control plane listens: gRPC (xDS, registration, admin) and HTTP (SD, metrics)."""

    listen: Address = DEFAULT_CONTROL_PLANE_LISTEN
    http: Address = DEFAULT_CONTROL_PLANE_HTTP


class Autoscale(_Strict):
    """Local autoscaling on inbound calls in flight, with hysteresis.

    Replicas are added when the average in flight per replica exceeds
    `target_in_flight` for `scale_up_checks` checks in a row, and removed one
    at a time when it stays below half the target for `scale_down_checks`.
    """

    target_in_flight: float = Field(default=DEFAULT_TARGET_IN_FLIGHT, gt=0)
    interval: Seconds = Field(default=DEFAULT_AUTOSCALE_INTERVAL, gt=0)
    scale_up_checks: int = Field(default=DEFAULT_SCALE_UP_CHECKS, ge=1)
    scale_down_checks: int = Field(default=DEFAULT_SCALE_DOWN_CHECKS, ge=1)


class MeshFile(_Strict):
    """The whole mesh.yaml."""

    agents: tuple[MeshAgent, ...] = Field(min_length=1)
    control_plane: ControlPlaneListen = ControlPlaneListen()
    policies: tuple[Path, ...] = ()
    autoscale: Autoscale = Autoscale()

    @field_validator("agents")
    @classmethod
    def _unique(cls, agents: tuple[MeshAgent, ...]) -> tuple[MeshAgent, ...]:
        names = [a.name for a in agents]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate agent names: {', '.join(duplicates)}")
        return agents

    @field_validator("policies", mode="before")
    @classmethod
    def _policy_paths(cls, value: object, info: ValidationInfo) -> tuple[Path, ...]:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list | tuple):
            raise ValueError("expected a list of policy files or folders")
        paths = tuple((_base_dir(info) / str(v)).resolve() for v in value)
        missing = [str(p) for p in paths if not p.exists()]
        if missing:
            raise ValueError(f"not found: {', '.join(missing)}")
        return paths

    @classmethod
    def load(cls, path: Path) -> MeshFile:
        """Reads and validates a mesh file; raises agentmesh.config.ConfigError."""
        return load_yaml_model(path, cls)
