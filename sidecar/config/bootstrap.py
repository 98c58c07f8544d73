"""The sidecar's bootstrap: agent.yaml, validated once at start-up.

Like Envoy's bootstrap it holds what the sidecar needs before any control
plane speaks: who the agent is, where it listens, where the agent is, its
contract files, health probe, limits and static egress targets. Paths are
resolved relative to the agent.yaml's folder. Invalid files are refused with
the file, line and field path (agentmesh.config.ConfigError).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from agentmesh.config import load_yaml_model, parse_duration

if TYPE_CHECKING:
    from agentmesh.identity.control_plane_tls import ControlPlaneTarget

Seconds = Annotated[float, BeforeValidator(parse_duration)]
_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_METHOD = re.compile(r"^/?[A-Za-z_][\w.]*[/.][A-Za-z_]\w*$")
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")

DEFAULT_INBOUND = "127.0.0.1:15006"
DEFAULT_EGRESS_GRPC = "127.0.0.1:15001"
DEFAULT_EGRESS_HTTP = "127.0.0.1:15080"
DEFAULT_ADMIN = "127.0.0.1:15000"
DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _address(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"invalid address {value!r}: expected host:port, e.g. 127.0.0.1:15006")
    return value


Address = Annotated[str, BeforeValidator(lambda v: _address(str(v)))]


def _resolve(path: str, info: ValidationInfo) -> Path:
    base = (info.context or {}).get("base_dir", Path.cwd())
    return (Path(base) / path).resolve()


def _optional_file(value: Any, info: ValidationInfo) -> Path | None:
    """An existing file, relative to the config file's folder; None when not given."""
    if value is None:
        return None
    path = _resolve(str(value), info)
    if not path.is_file():
        raise ValueError(f"not found: {path}")
    return path


class AgentIdentity(_Strict):
    """Who the agent is; name and version are the units of routing."""

    name: str
    version: str = "v1"
    team: str = "default"
    description: str = ""
    labels: dict[str, str] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _dns_label(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(f"{value!r} is not a valid agent name: lowercase letters, digits and '-', at most 63")
        return value


DEFAULT_AVAILABILITY = 0.99


class Slo(_Strict):
    """Service-level objectives, advertised in the manifest and behind the burn-rate alerts.

    `availability` is the target ratio of successful calls; the latency
    objective is "`latency_target` of calls finish within `latency_threshold`".
    """

    availability: float = Field(default=DEFAULT_AVAILABILITY, gt=0, le=1)
    latency_threshold: Seconds | None = Field(default=None, gt=0)
    latency_target: float | None = Field(default=None, gt=0, le=1)

    @model_validator(mode="after")
    def _both_or_neither(self) -> Slo:
        if (self.latency_threshold is None) != (self.latency_target is None):
            raise ValueError("set both latency_threshold and latency_target, or neither")
        return self


class Upstream(_Strict):
    """The untouched agent: its URL and the protocol it speaks."""

    url: str
    protocol: Literal["http", "grpc"] = "http"
    # Used when neither the caller nor the skill sets a deadline.
    timeout: Seconds = 300.0

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.port is None:
            raise ValueError(f"invalid url {value!r}: expected http://host:port")
        return value.rstrip("/")


class SkillOverride(_Strict):
    """Skill metadata set in agent.yaml; overrides options in the .proto."""

    idempotent: bool | None = None
    timeout: Seconds | None = None
    tags: tuple[str, ...] | None = None
    description: str | None = None


class Contract(_Strict):
    """The agent's .proto files (or a prebuilt descriptor set) and enforcement mode."""

    protos: tuple[Path, ...] = ()
    include: tuple[Path, ...] = ()
    descriptor_set: Path | None = None
    # Services to serve; default: every service defined in `protos`.
    services: tuple[str, ...] = ()
    # enforce: a response that breaks the contract becomes an error.
    # report: it is passed on, logged and counted (while rolling out a contract).
    response_mode: Literal["enforce", "report"] = "enforce"
    skills: dict[str, SkillOverride] = Field(default_factory=dict)

    @field_validator("protos", "include", mode="before")
    @classmethod
    def _paths(cls, value: Any, info: ValidationInfo) -> tuple[Path, ...]:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list | tuple):
            raise ValueError("expected a list of paths")
        paths = tuple(_resolve(str(v), info) for v in value)
        missing = [str(p) for p in paths if not p.exists()]
        if missing:
            raise ValueError(f"not found: {', '.join(missing)}")
        return paths

    @field_validator("descriptor_set", mode="before")
    @classmethod
    def _descriptor_path(cls, value: Any, info: ValidationInfo) -> Path | None:
        return _optional_file(value, info)

    @field_validator("skills")
    @classmethod
    def _skill_names(cls, value: dict[str, SkillOverride]) -> dict[str, SkillOverride]:
        for name in value:
            if not _METHOD.match(name):
                raise ValueError(f"{name!r} is not a method name: expected package.Service/Method")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> Contract:
        if bool(self.protos) == (self.descriptor_set is not None):
            raise ValueError("set exactly one of 'protos' or 'descriptor_set'")
        return self


class HttpProbe(_Strict):
    path: str = "/healthz"


class GrpcProbe(_Strict):
    service: str = ""


class HealthCheck(_Strict):
    """Active probe of the agent; like a Kubernetes probe with Envoy's thresholds."""

    http: HttpProbe | None = None
    tcp: bool = False
    grpc: GrpcProbe | None = None
    interval: Seconds = 2.0
    timeout: Seconds = 1.0
    healthy_threshold: int = Field(default=1, ge=1)
    unhealthy_threshold: int = Field(default=2, ge=1)

    @model_validator(mode="after")
    def _one_kind(self) -> HealthCheck:
        kinds = sum((self.http is not None, self.tcp, self.grpc is not None))
        if kinds > 1:
            raise ValueError("set at most one of 'http', 'tcp' or 'grpc'")
        if self.timeout > self.interval:
            raise ValueError("timeout must not exceed interval")
        return self


class Listen(_Strict):
    inbound: Address = DEFAULT_INBOUND
    egress_grpc: Address = DEFAULT_EGRESS_GRPC
    egress_http: Address = DEFAULT_EGRESS_HTTP
    admin: Address = DEFAULT_ADMIN


class Limits(_Strict):
    max_message_bytes: int = Field(default=DEFAULT_MAX_MESSAGE_BYTES, ge=1024)
    max_concurrent_calls: int = Field(default=1000, ge=1)
    # How long in-flight calls may run after SIGTERM before they are cut.
    drain_timeout: Seconds = 15.0


class StaticTarget(_Strict):
    """An agent this one may call, until a control plane supplies routes."""

    name: str
    address: Address


class ControlPlaneLink(_Strict):
    """Where the control plane is; without it the sidecar runs on static targets only."""

    address: Address
    # host:port other sidecars and proxies use to reach this inbound listener;
    # default: the inbound listen address (127.0.0.1 when it listens on all interfaces).
    # `${NAME}` takes an environment variable: `${POD_IP}:15006` in a Kubernetes pod.
    advertise_address: Address | None = None
    zone: str = ""
    # Where the last good xDS config is saved (the sidecar starts from it when the
    # control plane is unreachable); default: a file in the temp folder named after the agent.
    config_cache: Path | None = None
    # The trust bundle (`agentmesh ca bundle`) that turns on TLS to the control plane's secure port
    # (`--secure-listen`): registration, xDS and enrollment then go to a server proven to hold a certificate
    # of the mesh's CA. `server_name` is the name that certificate must carry; default
    # control-plane.<trust domain of the bundle's root>, else control-plane.agentmesh.local.
    ca_file: Path | None = None
    server_name: str | None = None

    @field_validator("ca_file", mode="before")
    @classmethod
    def _ca_file(cls, value: Any, info: ValidationInfo) -> Path | None:
        return _optional_file(value, info)

    @model_validator(mode="after")
    def _tls(self) -> ControlPlaneLink:
        if self.server_name is not None and self.ca_file is None:
            raise ValueError("server_name needs ca_file: it is the name the control plane's TLS certificate carries")
        if self.ca_file is not None:
            from agentmesh.identity.control_plane_tls import ControlPlaneTls, TrustBundleError

            try:
                ControlPlaneTls.from_file(self.ca_file, server_name=self.server_name)
            except TrustBundleError as exc:
                raise ValueError(str(exc)) from None
        return self

    def target(self) -> ControlPlaneTarget:
        """How to dial the control plane: plaintext, or TLS verified with `ca_file` (read again here)."""
        from agentmesh.identity.control_plane_tls import ControlPlaneTarget, ControlPlaneTls

        if self.ca_file is None:
            return ControlPlaneTarget(self.address)
        return ControlPlaneTarget(self.address, ControlPlaneTls.from_file(self.ca_file, server_name=self.server_name))

    @field_validator("advertise_address", mode="before")
    @classmethod
    def _expand_environment(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value

        def variable(match: re.Match[str]) -> str:
            name = match[1]
            if not os.environ.get(name):
                raise ValueError(f"{match[0]} in {value!r}: the environment variable {name} is not set")
            return os.environ[name]

        return _VARIABLE.sub(variable, value)


IdentityMode = Literal["strict", "permissive"]


class IdentityConfig(_Strict):
    """The agent's workload identity: how the sidecar enrolls, where it keeps its key, how inbound treats plaintext.

    mTLS is on when the sidecar has a control-plane link and either a join
    token (`join_token`, `join_token_file` or the AGENTMESH_JOIN_TOKEN
    environment variable) or an identity persisted in `dir` by an earlier run.
    """

    join_token: str | None = Field(default=None, min_length=1, repr=False)
    join_token_file: Path | None = None
    # Where the private key and certificates persist (mode 0700); default: a folder named after
    # the agent and its inbound address next to the control plane link's config cache.
    dir: Path | None = None
    # strict: the inbound port accepts mutual TLS only. permissive: TLS and plaintext (migration).
    mode: IdentityMode = "strict"

    @field_validator("join_token_file", mode="before")
    @classmethod
    def _token_file(cls, value: Any, info: ValidationInfo) -> Path | None:
        return _optional_file(value, info)

    @field_validator("dir", mode="before")
    @classmethod
    def _dir(cls, value: Any, info: ValidationInfo) -> Path | None:
        if value is None:
            return None
        path = _resolve(str(value), info)
        if path.exists() and not path.is_dir():
            raise ValueError(f"not a folder: {path}")
        return path

    @model_validator(mode="after")
    def _one_token_source(self) -> IdentityConfig:
        if self.join_token is not None and self.join_token_file is not None:
            raise ValueError("set at most one of 'join_token' or 'join_token_file'")
        return self


class Telemetry(_Strict):
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    access_log: bool = True


class Bootstrap(_Strict):
    """The whole agent.yaml."""

    agent: AgentIdentity
    upstream: Upstream
    contract: Contract
    slo: Slo = Slo()
    health: HealthCheck = HealthCheck()
    listen: Listen = Listen()
    limits: Limits = Limits()
    targets: tuple[StaticTarget, ...] = ()
    control_plane: ControlPlaneLink | None = None
    identity: IdentityConfig = IdentityConfig()
    telemetry: Telemetry = Telemetry()

    @model_validator(mode="after")
    def _distinct_targets(self) -> Bootstrap:
        names = [t.name for t in self.targets]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate targets: {', '.join(duplicates)}")
        return self

    @classmethod
    def load(cls, path: Path) -> Bootstrap:
        """Reads and validates agent.yaml; raises agentmesh.config.ConfigError."""
        return load_yaml_model(path, cls)
