"""The policy kinds users write: TrafficPolicy, AccessPolicy and AgentConfig.

Documents are Kubernetes-style YAML (`apiVersion: agentmesh.io/v1`, `kind`,
`metadata`, `spec`) and are validated here in two layers:

- the pydantic models check shape, types and rules local to one object
  (unknown keys, ranges, weights summing to 100, one matcher per header);
- `semantic_problems` checks rules that span fields of one document (a split
  entry naming a version where the target is a service, a per-route retry
  budget, an unreachable route), with the exact field path of each problem.

Checks across documents and against the registry live in `validate.py`; the
meaning of every field is documented in docs/policy.md. Models are frozen:
the store, the validator and the xDS translation share them as plain values.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Final, Literal, NamedTuple

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    field_validator,
    model_validator,
)

from agentmesh.config import parse_duration
from agentmesh.config.regex import compile_re2
from agentmesh.identity.spiffe import check_name

API_VERSION: Final = "agentmesh.io/v1"
# Requests carrying this header with a version name go to that version only.
DEFAULT_VERSION_HEADER = "x-agentmesh-version"
# AgentConfig values reach the agent as `x-agentmesh-config-<key>` headers.
CONFIG_HEADER_PREFIX = "x-agentmesh-config-"
# The target of the mesh-wide AccessPolicy: it applies to every agent (at most one per mesh).
MESH_WIDE: Final = "*"
# RBAC policy names `<AccessPolicy name>/<rule>` must not clash with the built-in ones (`builtin/grpc-health`).
RESERVED_ACCESS_POLICY_NAME: Final = "builtin"

# The gRPC status codes both Envoy (`retry_on`) and gRPC clients (gRFC A44) retry on.
RETRYABLE_CODES = ("cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable")
RetryOn = Literal["cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable"]
LoadBalancing = Literal["least_request", "round_robin", "peak_ewma"]
Action = Literal["allow", "deny"]

_POLICY_NAME = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$")
_AGENT = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_SERVICE = re.compile(rf"^{_IDENT}(\.{_IDENT})+$")
_METHOD = re.compile(rf"^(?P<service>{_IDENT}(\.{_IDENT})+)/(?P<method>{_IDENT}|\*)$")
_VERSION = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$")
_TEAM = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$")
_HEADER = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_CONFIG_KEY = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_LABEL_KEY = re.compile(r"^([a-z0-9.-]{1,253}/)?[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$")


# --- scalar types -------------------------------------------------------------------------------------------------


def format_duration(seconds: float) -> str:
    """Renders seconds the way users write them: '500ms', '5s' (inverse of parse_duration)."""
    millis = round(seconds * 1000, 6)
    if millis == int(millis):
        whole = int(millis)
        return f"{whole // 1000}s" if whole % 1000 == 0 else f"{whole}ms"
    return f"{millis}ms"


def _positive_duration(value: object) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError("duration must be greater than 0")
    return seconds


# Durations are written '500ms', '5s', '2m'; held as float seconds; rendered back as text.
Duration = Annotated[
    float, BeforeValidator(_positive_duration), PlainSerializer(format_duration, return_type=str, when_used="json")
]


def _matching(pattern: re.Pattern[str], what: str, example: str) -> Any:
    def check(value: str) -> str:
        if not pattern.match(value):
            raise ValueError(f"{value!r} is not a valid {what}, e.g. {example!r}")
        return value

    return AfterValidator(check)


def _strip_slash(value: object) -> object:
    return value.removeprefix("/") if isinstance(value, str) else value


PolicyName = Annotated[str, _matching(_POLICY_NAME, "policy name (lowercase letters, digits, '-', '.')", "researcher")]
AgentName = Annotated[str, _matching(_AGENT, "agent name (lowercase letters, digits and '-')", "researcher")]
ServiceName = Annotated[str, _matching(_SERVICE, "full service name (package.Service)", "research.v1.Researcher")]
# 'package.Service/Method' or 'package.Service/*' (a leading '/' is accepted and dropped).
MethodPattern = Annotated[
    str,
    BeforeValidator(_strip_slash),
    _matching(_METHOD, "method (package.Service/Method or package.Service/*)", "research.v1.Researcher/Search"),
]
VersionName = Annotated[str, _matching(_VERSION, "version name", "v2")]
TeamName = Annotated[str, _matching(_TEAM, "team name", "research")]
HeaderName = Annotated[str, _matching(_HEADER, "header name (lowercase letters, digits, '-', '_', '.')", "x-tenant")]
Name = Annotated[str, _matching(_AGENT, "name (lowercase letters, digits and '-')", "search-canary")]


def _agent_or_star(value: str) -> str:
    if value != "*" and not _AGENT.match(value):
        raise ValueError(f"{value!r} is not a valid agent name (lowercase letters, digits and '-') or '*'")
    return value


def _team_or_star(value: str) -> str:
    if value != "*" and not _TEAM.match(value):
        raise ValueError(f"{value!r} is not a valid team name or '*'")
    return value


def _target(value: str) -> str:
    if not (_AGENT.match(value) or _SERVICE.match(value)):
        raise ValueError(
            f"{value!r} is neither an agent name (e.g. 'researcher') nor a full service name "
            "(e.g. 'research.v1.Researcher')"
        )
    return value


def is_service_name(target: str) -> bool:
    """True when `target` names a capability (a gRPC service) rather than an agent."""
    return "." in target


def method_service(method: str) -> str:
    """The service part of 'package.Service/Method'."""
    return method.partition("/")[0]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


# --- metadata -----------------------------------------------------------------------------------------------------


class Metadata(_Strict):
    """Who the document is: a name unique per kind, and free-form labels."""

    name: PolicyName
    labels: dict[str, str] = Field(default_factory=dict)

    @field_validator("labels")
    @classmethod
    def _label_keys(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if not _LABEL_KEY.match(key):
                raise ValueError(f"{key!r} is not a valid label key")
        return value


# --- TrafficPolicy ------------------------------------------------------------------------------------------------


class HeaderMatch(_Strict):
    """One request-header condition (Envoy `HeaderMatcher`); exactly one of exact/prefix/regex/present."""

    name: HeaderName
    exact: str | None = None
    prefix: str | None = None
    # RE2 syntax for Envoy and gRPC; checked here with Python's `re`, which accepts a superset.
    regex: str | None = None
    present: bool | None = None
    invert: bool = False

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        if value.startswith("grpc-"):
            raise ValueError(f"{value!r}: gRPC clients never match 'grpc-' headers")
        return value

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            compile_re2(value)
        return value

    @model_validator(mode="after")
    def _one_matcher(self) -> HeaderMatch:
        given = [k for k in ("exact", "prefix", "regex", "present") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("set exactly one of exact, prefix, regex, present")
        return self


class RouteMatch(_Strict):
    """A request matches when the method matches and every header condition holds."""

    # 'package.Service/Method', 'package.Service/*', or absent for every method.
    method: MethodPattern | None = None
    headers: tuple[HeaderMatch, ...] = ()

    @property
    def is_catch_all(self) -> bool:
        return self.method is None and not self.headers


class Backend(_Strict):
    """One weighted entry of a split: a version of the target agent, or an implementing agent of a service."""

    version: VersionName | None = None
    agent: AgentName | None = None
    weight: int = Field(ge=0, le=100)


def _check_split(split: tuple[Backend, ...]) -> tuple[Backend, ...]:
    if not split:
        return split
    total = sum(b.weight for b in split)
    if total != 100:
        raise ValueError(f"weights must sum to 100, got {total}")
    seen: set[tuple[str | None, str | None]] = set()
    for backend in split:
        key = (backend.agent, backend.version)
        if key in seen:
            what = " ".join(f"{k} {v}" for k, v in (("agent", backend.agent), ("version", backend.version)) if v)
            raise ValueError(f"{what or 'an empty entry'} appears twice")
        seen.add(key)
    return split


Split = Annotated[tuple[Backend, ...], AfterValidator(_check_split)]


class RetryBackoff(_Strict):
    """Exponential backoff between retries (Envoy `RetryPolicy.retry_back_off`, gRFC A44)."""

    base_interval: Duration = 0.025
    # Default: 10 times base_interval, as Envoy and gRPC do.
    max_interval: Duration | None = None

    @model_validator(mode="after")
    def _ordered(self) -> RetryBackoff:
        if self.max_interval is not None and self.max_interval < self.base_interval:
            raise ValueError("max_interval must not be less than base_interval")
        return self

    @property
    def effective_max(self) -> float:
        return self.max_interval if self.max_interval is not None else 10 * self.base_interval


class RetryBudget(_Strict):
    """Retries allowed as a share of active requests (Envoy `RetryBudget`, Linkerd's budget model)."""

    percent: float = Field(default=20.0, gt=0, le=100)
    # Retries always allowed up to this many concurrent retries, whatever the percentage says.
    min_concurrency: int = Field(default=3, ge=0)


class Retries(_Strict):
    """When and how often a failed call is tried again."""

    # Retries after the first try (Envoy `num_retries`); 0 turns retries off.
    attempts: int = Field(default=2, ge=0, le=10)
    per_try_timeout: Duration | None = None
    retry_on: tuple[RetryOn, ...] = ("unavailable",)
    backoff: RetryBackoff = RetryBackoff()
    # Skills not marked idempotent in their contract are never retried unless this is true.
    retry_non_idempotent: bool = False
    # Cluster-wide, so set once per target (spec.retries), never per route.
    budget: RetryBudget = RetryBudget()

    @field_validator("retry_on")
    @classmethod
    def _unique(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError(f"name at least one code: {', '.join(RETRYABLE_CODES)}")
        return tuple(dict.fromkeys(value))


class Route(_Strict):
    """One route: which requests (match), where they go (split), and how (timeout, retries)."""

    name: Name | None = None
    # Any one of these matches (OR); none means every request to the target.
    match: tuple[RouteMatch, ...] = ()
    # Default: the spec's split, else every registered version equally.
    split: Split = ()
    # Default: the spec's timeout.
    timeout: Duration | None = None
    # Default: the spec's retries.
    retries: Retries | None = None

    @property
    def is_catch_all(self) -> bool:
        return not self.match or any(m.is_catch_all for m in self.match)


class StickySession(_Strict):
    """Requests with the same value of `header` go to the same version and endpoint while it is healthy."""

    header: HeaderName


class SuccessRateEjection(_Strict):
    """Ejects endpoints whose success rate is far below the cluster's mean (Envoy success-rate outlier detection)."""

    minimum_hosts: int = Field(default=5, ge=1)
    request_volume: int = Field(default=100, ge=1)
    # Ejected when success rate < mean - stdev_factor * stdev.
    stdev_factor: float = Field(default=1.9, gt=0)


class FailurePercentageEjection(_Strict):
    """Ejects endpoints whose failure percentage is at or above `threshold`."""

    threshold: int = Field(default=85, ge=0, le=100)
    minimum_hosts: int = Field(default=5, ge=1)
    request_volume: int = Field(default=50, ge=1)


class OutlierDetection(_Strict):
    """Passive health: endpoints that keep failing are ejected for a while (Envoy `OutlierDetection`)."""

    consecutive_errors: int = Field(default=5, ge=1)
    interval: Duration = 10.0
    base_ejection_time: Duration = 30.0
    max_ejection_percent: int = Field(default=10, ge=0, le=100)
    success_rate: SuccessRateEjection | None = None
    failure_percentage: FailurePercentageEjection | None = None


class CircuitBreaker(_Strict):
    """Limits on concurrent work per cluster (Envoy `CircuitBreakers.Thresholds`); unset means 1024."""

    max_requests: int | None = Field(default=None, ge=1)
    max_pending_requests: int | None = Field(default=None, ge=1)
    max_connections: int | None = Field(default=None, ge=1)


class TrafficPolicySpec(_Strict):
    """Routing, canary split, timeouts, retries and balancing for calls to one agent or one capability."""

    # An agent name ('researcher') or a full service name ('research.v1.Researcher').
    target: Annotated[str, AfterValidator(_target)]
    # Split for routes without their own, and for requests no route matches.
    split: Split = ()
    # Default timeout and retries of every route.
    timeout: Duration | None = None
    retries: Retries | None = None
    # Tried in order; the first match wins. Requests no route matches use the defaults above.
    routes: tuple[Route, ...] = ()
    sticky: StickySession | None = None
    # Agent targets only; null turns version pinning off.
    version_header: HeaderName | None = DEFAULT_VERSION_HEADER
    # Default: least_request (ring hash when sticky is set).
    load_balancing: LoadBalancing | None = None
    outlier_detection: OutlierDetection | None = None
    circuit_breaker: CircuitBreaker | None = None


# --- AccessPolicy -------------------------------------------------------------------------------------------------


class Peers(_Strict):
    """Callers, as their certificates name them: any listed agent or any agent of a listed team; '*' is anyone."""

    agents: tuple[Annotated[str, AfterValidator(_agent_or_star)], ...] = ()
    teams: tuple[Annotated[str, AfterValidator(_team_or_star)], ...] = ()

    @model_validator(mode="after")
    def _not_empty(self) -> Peers:
        if not self.agents and not self.teams:
            raise ValueError("name at least one agent or team ('*' for anyone), or leave 'from' out")
        return self

    @property
    def anyone(self) -> bool:
        return "*" in self.agents or "*" in self.teams


class Operations(_Strict):
    """What is called: any listed service or method; absent means everything the target serves."""

    services: tuple[ServiceName, ...] = ()
    methods: tuple[MethodPattern, ...] = ()

    @model_validator(mode="after")
    def _not_empty(self) -> Operations:
        if not self.services and not self.methods:
            raise ValueError("name at least one service or method, or leave 'to' out")
        return self


class AccessRule(_Strict):
    """Allow or deny calls from some callers to some operations of the target."""

    name: Name | None = None
    action: Action
    # Absent: any caller.
    from_: Peers | None = Field(default=None, alias="from")
    # Absent: every operation of the target.
    to: Operations | None = None


class AccessPolicySpec(_Strict):
    """Who may call the target agent ('*': every agent). A matching deny rule wins over any allow rule."""

    # An agent name, or '*' for the mesh-wide policy every agent enforces besides its own.
    target: Annotated[str, AfterValidator(_agent_or_star)]
    # What happens to calls no rule matches. Unset: the mesh-wide policy's default_action, else deny.
    default_action: Action | None = None
    rules: tuple[AccessRule, ...] = ()

    @property
    def mesh_wide(self) -> bool:
        return self.target == MESH_WIDE


# --- AgentConfig --------------------------------------------------------------------------------------------------


def _header_value(value: object) -> object:
    if isinstance(value, bool | int | float):
        raise ValueError(f"expected a string; quote the value, e.g. '{value}'")
    if isinstance(value, str) and any(not (" " <= ch <= "~") for ch in value):
        raise ValueError("values must be printable ASCII (they travel as request headers)")
    return value


ConfigKey = Annotated[str, _matching(_CONFIG_KEY, "key (lowercase letters, digits and '-', at most 63)", "model")]


class AgentConfigSpec(_Strict):
    """Runtime values for an untouched agent, delivered on every request as `x-agentmesh-config-<key>`."""

    target: AgentName
    values: dict[ConfigKey, Annotated[str, BeforeValidator(_header_value)]] = Field(default_factory=dict)


# --- documents ----------------------------------------------------------------------------------------------------


class PolicyRef(NamedTuple):
    """A document's identity in the store: (kind, name)."""

    kind: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind}/{self.name}"


class TrafficPolicy(_Strict):
    """kind: TrafficPolicy."""

    api_version: Literal["agentmesh.io/v1"] = Field(default=API_VERSION, alias="apiVersion")
    kind: Literal["TrafficPolicy"] = "TrafficPolicy"
    metadata: Metadata
    spec: TrafficPolicySpec

    @property
    def ref(self) -> PolicyRef:
        return PolicyRef(self.kind, self.metadata.name)


class AccessPolicy(_Strict):
    """kind: AccessPolicy."""

    api_version: Literal["agentmesh.io/v1"] = Field(default=API_VERSION, alias="apiVersion")
    kind: Literal["AccessPolicy"] = "AccessPolicy"
    metadata: Metadata
    spec: AccessPolicySpec

    @property
    def ref(self) -> PolicyRef:
        return PolicyRef(self.kind, self.metadata.name)


class AgentConfig(_Strict):
    """kind: AgentConfig."""

    api_version: Literal["agentmesh.io/v1"] = Field(default=API_VERSION, alias="apiVersion")
    kind: Literal["AgentConfig"] = "AgentConfig"
    metadata: Metadata
    spec: AgentConfigSpec

    @property
    def ref(self) -> PolicyRef:
        return PolicyRef(self.kind, self.metadata.name)


Policy = TrafficPolicy | AccessPolicy | AgentConfig
KINDS: Mapping[str, type[TrafficPolicy] | type[AccessPolicy] | type[AgentConfig]] = {
    "TrafficPolicy": TrafficPolicy,
    "AccessPolicy": AccessPolicy,
    "AgentConfig": AgentConfig,
}


def policy_from_dict(data: Mapping[str, Any]) -> Policy:
    """Builds the model named by data['kind']; raises pydantic.ValidationError or ValueError (unknown kind)."""
    kind = data.get("kind")
    model = KINDS.get(kind) if isinstance(kind, str) else None
    if model is None:
        raise ValueError(f"unknown kind {kind!r}: expected one of {', '.join(KINDS)}")
    return model.model_validate(data)


def policy_to_dict(policy: Policy, *, exclude_defaults: bool = False) -> dict[str, Any]:
    """The document as YAML/JSON-ready data (durations as text, 'apiVersion' and 'from' spelled as written)."""
    return policy.model_dump(mode="json", by_alias=True, exclude_defaults=exclude_defaults)


def render_yaml(policy: Policy) -> str:
    """The document as users write it: defaults left out, keys in declaration order."""
    data = policy_to_dict(policy, exclude_defaults=True)
    # exclude_defaults drops apiVersion and kind too; a document always shows them.
    data = {"apiVersion": policy.api_version, "kind": policy.kind, **data}
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False)


# --- rules spanning fields of one document ------------------------------------------------------------------------

Path = tuple[str | int, ...]


@dataclass(frozen=True)
class Problem:
    """A rule broken inside one document: the field path (as written in YAML), why, and how bad."""

    path: Path
    reason: str
    severity: Literal["error", "warning"] = "error"


def semantic_problems(policy: Policy) -> list[Problem]:
    """Checks the rules that span several fields of one document; registry checks live in validate.py."""
    if isinstance(policy, TrafficPolicy):
        return _traffic_problems(policy.spec)
    if isinstance(policy, AccessPolicy):
        problems = _access_problems(policy.spec)
        if policy.metadata.name == RESERVED_ACCESS_POLICY_NAME:
            reason = f"{RESERVED_ACCESS_POLICY_NAME!r} is reserved for the built-in access rules; pick another name"
            problems.insert(0, Problem(("metadata", "name"), reason))
        return problems
    return []


def _split_problems(split: tuple[Backend, ...], service_target: bool, at: Path) -> list[Problem]:
    problems = []
    for index, backend in enumerate(split):
        here = (*at, index)
        if service_target and backend.agent is None:
            problems.append(Problem((*here, "agent"), "a service target splits across agents: set 'agent'"))
        if not service_target and backend.agent is not None:
            problems.append(Problem((*here, "agent"), "an agent target splits across its versions: remove 'agent'"))
        if not service_target and backend.version is None:
            problems.append(Problem((*here, "version"), "an agent target splits across versions: set 'version'"))
    return problems


def _method_problems(method: str | None, target: str, at: Path) -> list[Problem]:
    if method is None or not is_service_name(target) or method_service(method) == target:
        return []
    return [Problem(at, f"{method!r} is not a method of {target}, so it never matches")]


def _traffic_problems(spec: TrafficPolicySpec) -> list[Problem]:
    service_target = is_service_name(spec.target)
    problems = _split_problems(spec.split, service_target, ("spec", "split"))
    if service_target and spec.version_header not in (None, DEFAULT_VERSION_HEADER):
        problems.append(
            Problem(("spec", "version_header"), "version pinning applies to agent targets; remove it for a service")
        )
    if spec.sticky is not None and spec.load_balancing is not None:
        problems.append(
            Problem(("spec", "load_balancing"), "sticky sessions use ring-hash balancing; remove load_balancing")
        )
    names: dict[str, int] = {}
    catch_all: int | None = None
    for index, route in enumerate(spec.routes):
        at: Path = ("spec", "routes", index)
        if route.name is not None:
            if route.name in names:
                problems.append(
                    Problem((*at, "name"), f"route name {route.name!r} is used by routes[{names[route.name]}]")
                )
            names.setdefault(route.name, index)
        if catch_all is not None:
            problems.append(
                Problem(at, f"unreachable: routes[{catch_all}] already matches every request", severity="warning")
            )
        problems += _split_problems(route.split, service_target, (*at, "split"))
        for m_index, match in enumerate(route.match):
            problems += _method_problems(match.method, spec.target, (*at, "match", m_index, "method"))
        if route.retries is not None and route.retries.budget != RetryBudget():
            problems.append(
                Problem((*at, "retries", "budget"), "the retry budget is per target: set it in spec.retries")
            )
        if route.is_catch_all and catch_all is None:
            catch_all = index
    for path, retries, timeout in _all_retries(spec):
        if retries.attempts > 4:
            problems.append(
                Problem((*path, "attempts"), "gRPC clients cap calls at 5 attempts (4 retries)", severity="warning")
            )
        if retries.per_try_timeout is not None and timeout is not None and retries.per_try_timeout >= timeout:
            reason = f"not shorter than the timeout ({format_duration(timeout)}), so no retry can happen in time"
            problems.append(Problem((*path, "per_try_timeout"), reason, severity="warning"))
    return problems


def _all_retries(spec: TrafficPolicySpec) -> list[tuple[Path, Retries, float | None]]:
    """Each retry policy written in `spec`, with the timeout it runs under."""
    found: list[tuple[Path, Retries, float | None]] = []
    if spec.retries is not None:
        found.append((("spec", "retries"), spec.retries, spec.timeout))
    for index, route in enumerate(spec.routes):
        if route.retries is not None:
            timeout = route.timeout if route.timeout is not None else spec.timeout
            found.append((("spec", "routes", index, "retries"), route.retries, timeout))
    return found


def _in_certificates(team: str) -> bool:
    """Whether a SPIFFE ID can name `team` (agentmesh.identity.spiffe: one lowercase DNS label)."""
    try:
        check_name(team, "team")
    except ValueError:
        return False
    return True


def _access_problems(spec: AccessPolicySpec) -> list[Problem]:
    problems = []
    names: dict[str, int] = {}
    for index, rule in enumerate(spec.rules):
        at: Path = ("spec", "rules", index)
        if rule.name is not None:
            if rule.name in names:
                problems.append(Problem((*at, "name"), f"rule name {rule.name!r} is used by rules[{names[rule.name]}]"))
            names.setdefault(rule.name, index)
        if rule.action == "allow" and spec.default_action == "allow":
            problems.append(
                Problem((*at, "action"), "has no effect: default_action is already allow", severity="warning")
            )
        for t_index, team in enumerate(rule.from_.teams if rule.from_ is not None else ()):
            if team != "*" and not _in_certificates(team):
                reason = (
                    f"team {team!r} can never match a caller: certificates name teams in lowercase letters, "
                    "digits and '-' (at most 63)"
                )
                problems.append(Problem((*at, "from", "teams", t_index), reason))
    return problems
