"""Validation of policy documents before anything is stored.

Three passes, each naming file, line and field path for every issue:

1. parsing: YAML syntax, apiVersion/kind, unknown keys, wrong types, local
   rules (pydantic models in model.py);
2. the document as a whole (`model.semantic_problems`) and the set as a whole:
   duplicate (kind, name), two policies of one kind for the same target (so
   at most one mesh-wide AccessPolicy, target '*'), also against policies
   already stored;
3. the registry: unknown agents, versions, services and methods. An agent that
   is not registered is a warning (it may register later); a version, service
   or method a registered agent does not have is an error, since the policy
   would never match. docs/policy.md lists every rule and its severity.

The registry is read through `RegistryView`, a plain protocol, so this module
depends on no registry implementation.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path as FsPath
from typing import Any, Protocol

import pydantic

from agentmesh.config import ConfigError, ConfigIssue
from agentmesh.config.source import issues_from_validation, iter_documents
from control_plane.policy.model import (
    API_VERSION,
    KINDS,
    MESH_WIDE,
    AccessPolicy,
    AccessPolicySpec,
    AccessRule,
    AgentConfig,
    Backend,
    Path,
    Policy,
    PolicyRef,
    Problem,
    TrafficPolicy,
    is_service_name,
    method_service,
    semantic_problems,
)

YAML_SUFFIXES = (".yaml", ".yml")


class KnownAgent(Protocol):
    """What validation needs to know about one registered agent."""

    @property
    def versions(self) -> Collection[str]: ...

    @property
    def services(self) -> Collection[str]:
        """Full service names the agent implements."""
        ...

    @property
    def methods(self) -> Collection[str]:
        """Full method names, 'package.Service/Method'."""
        ...


class RegistryView(Protocol):
    """The registered agents by name (control_plane.translate.MeshView satisfies it)."""

    @property
    def agents(self) -> Mapping[str, KnownAgent]: ...


@dataclass(frozen=True)
class PolicyDocument:
    """A validated policy and where it was written (source file and YAML line of each field path)."""

    policy: Policy
    source: str
    positions: Mapping[Path, int] = field(default_factory=dict, repr=False)

    @classmethod
    def unplaced(cls, policy: Policy, *, source: str | None = None) -> PolicyDocument:
        """A policy with no file behind it (stored, or built in code); issues name it by kind/name."""
        return cls(policy, source or str(policy.ref))

    @property
    def ref(self) -> PolicyRef:
        return self.policy.ref

    def line(self, path: Path = ()) -> int | None:
        """The YAML line of `path`, or of its nearest written ancestor."""
        for end in range(len(path), -1, -1):
            if path[:end] in self.positions:
                return self.positions[path[:end]]
        return None

    def where(self) -> str:
        line = self.line()
        return f"{self.source}:{line}" if line else self.source

    def issue(self, path: Path, reason: str) -> ConfigIssue:
        return ConfigIssue(self.source, self.line(path), dotted(path), reason)


@dataclass(frozen=True)
class ValidationReport:
    """Errors block a change; warnings are shown and let it through."""

    errors: tuple[ConfigIssue, ...] = ()
    warnings: tuple[ConfigIssue, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.errors

    def raise_for_errors(self) -> None:
        if self.errors:
            raise ConfigError(list(self.errors))


def dotted(path: Path) -> str:
    """('spec', 'routes', 0, 'split') -> 'spec.routes[0].split'."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


# --- pass 1: parsing ----------------------------------------------------------------------------------------------


def parse_documents(text: str, source: str) -> tuple[list[PolicyDocument], list[ConfigIssue]]:
    """Parses every YAML document in `text`; returns the valid ones and the issues of the others."""
    try:
        raw = list(iter_documents(text, source))
    except ConfigError as exc:
        return [], list(exc.issues)
    documents: list[PolicyDocument] = []
    issues: list[ConfigIssue] = []
    for data, positions in raw:
        parsed = _parse_one(data, positions, source)
        if isinstance(parsed, PolicyDocument):
            documents.append(parsed)
        else:
            issues += parsed
    return documents, issues


def _parse_one(data: Any, positions: dict[Path, int], source: str) -> PolicyDocument | list[ConfigIssue]:
    top = positions.get(())

    def at(key: str) -> int | None:
        return positions.get((key,), top)

    if not isinstance(data, dict):
        return [ConfigIssue(source, top, "", "expected a mapping with apiVersion, kind, metadata and spec")]
    issues = []
    if "apiVersion" not in data:
        issues.append(ConfigIssue(source, top, "apiVersion", f"required: {API_VERSION}"))
    elif data["apiVersion"] != API_VERSION:
        issues.append(
            ConfigIssue(
                source, at("apiVersion"), "apiVersion", f"unsupported {data['apiVersion']!r}: use {API_VERSION}"
            )
        )
    kind = data.get("kind")
    model = KINDS.get(kind) if isinstance(kind, str) else None
    if "kind" not in data:
        issues.append(ConfigIssue(source, top, "kind", f"required: one of {', '.join(KINDS)}"))
    elif model is None:
        issues.append(
            ConfigIssue(source, at("kind"), "kind", f"unknown kind {kind!r}: expected one of {', '.join(KINDS)}")
        )
    if issues or model is None:
        return issues
    try:
        policy = model.model_validate(data)
    except pydantic.ValidationError as exc:
        return issues_from_validation(exc, source, positions)
    return PolicyDocument(policy, source, positions)


def _policy_files(path: FsPath) -> tuple[list[FsPath], list[ConfigIssue]]:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in YAML_SUFFIXES and p.is_file())
        if not files:
            return [], [ConfigIssue(str(path), None, "", "no .yaml or .yml files in this directory")]
        return files, []
    if not path.exists():
        return [], [ConfigIssue(str(path), None, "", "no such file or directory")]
    return [path], []


def read_documents(paths: Iterable[str | FsPath]) -> tuple[list[PolicyDocument], list[ConfigIssue]]:
    """Reads files and directories (recursively, *.yaml and *.yml, in name order); collects every issue."""
    documents: list[PolicyDocument] = []
    issues: list[ConfigIssue] = []
    for given in paths:
        files, missing = _policy_files(FsPath(given))
        issues += missing
        for path in files:
            try:
                text = path.read_text()
            except (OSError, UnicodeDecodeError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
                issues.append(ConfigIssue(str(path), None, "", f"cannot read: {reason}"))
                continue
            found, bad = parse_documents(text, str(path))
            documents += found
            issues += bad
    return documents, issues


def load_documents(paths: Iterable[str | FsPath]) -> list[PolicyDocument]:
    """Like read_documents, but raises ConfigError listing every parsing issue."""
    documents, issues = read_documents(paths)
    if issues:
        raise ConfigError(issues)
    return documents


# --- passes 2 and 3 -----------------------------------------------------------------------------------------------


def validate_documents(
    documents: Sequence[PolicyDocument],
    *,
    registry: RegistryView | None = None,
    stored: Iterable[Policy] = (),
) -> ValidationReport:
    """Checks documents on their own, as a set (with `stored` ones they would join), and against `registry`.

    A stored policy with the same kind and name as a document is being replaced,
    so it is not checked against it.
    """
    errors: list[ConfigIssue] = []
    warnings: list[ConfigIssue] = []

    def report(document: PolicyDocument, problems: Iterable[Problem]) -> None:
        for problem in problems:
            issue = document.issue(problem.path, problem.reason)
            (errors if problem.severity == "error" else warnings).append(issue)

    for document in documents:
        report(document, semantic_problems(document.policy))
    given = {d.ref for d in documents}
    others = [PolicyDocument.unplaced(p, source=f"stored {p.ref}") for p in stored if p.ref not in given]
    for document, problems in _set_problems(documents, others):
        report(document, problems)
    if registry is not None:
        for document in documents:
            report(document, registry_problems(document.policy, registry))
    return ValidationReport(tuple(errors), tuple(warnings))


def validate_paths(
    paths: Iterable[str | FsPath], *, registry: RegistryView | None = None, stored: Iterable[Policy] = ()
) -> tuple[list[PolicyDocument], ValidationReport]:
    """Reads and validates files and directories in one call (what `agentmesh policy validate` runs)."""
    documents, issues = read_documents(paths)
    report = validate_documents(documents, registry=registry, stored=stored)
    return documents, ValidationReport((*issues, *report.errors), report.warnings)


def check_policy_set(policies: Sequence[Policy]) -> list[ConfigIssue]:
    """The errors of a whole policy set with no files behind it (the store's last check before a new version)."""
    return list(validate_documents([PolicyDocument.unplaced(p) for p in policies]).errors)


def _target_of(policy: Policy) -> str:
    return policy.spec.target


def _set_problems(
    documents: Sequence[PolicyDocument], others: Sequence[PolicyDocument]
) -> list[tuple[PolicyDocument, list[Problem]]]:
    found: list[tuple[PolicyDocument, list[Problem]]] = []
    by_ref: dict[PolicyRef, PolicyDocument] = {}
    by_target: dict[tuple[str, str], PolicyDocument] = {}
    for document in others:
        by_target.setdefault((document.ref.kind, _target_of(document.policy)), document)
    for document in documents:
        first = by_ref.setdefault(document.ref, document)
        if first is not document:
            reason = f"duplicate {document.ref}: also defined at {first.where()}"
            found.append((document, [Problem(("metadata", "name"), reason)]))
            continue
        target = _target_of(document.policy)
        owner = by_target.setdefault((document.ref.kind, target), document)
        if owner is not document:
            if isinstance(document.policy, AccessPolicy) and document.policy.spec.mesh_wide:
                reason = (
                    f"the mesh already has a mesh-wide AccessPolicy, {owner.ref} ({owner.where()}): "
                    f"at most one AccessPolicy targets '{MESH_WIDE}'; merge them into one document"
                )
            else:
                reason = (
                    f"{target} already has {owner.ref} ({owner.where()}): "
                    f"one {document.ref.kind} per target; merge them into one document"
                )
            found.append((document, [Problem(("spec", "target"), reason)]))
    return found


# --- pass 3: the registry -----------------------------------------------------------------------------------------


def registry_problems(policy: Policy, registry: RegistryView) -> list[Problem]:
    """What in `policy` names agents, versions, services or methods the registry does not know."""
    if isinstance(policy, TrafficPolicy):
        return _traffic_registry(policy, registry)
    if isinstance(policy, AccessPolicy):
        return _access_registry(policy, registry)
    if isinstance(policy, AgentConfig):
        return _unknown_agent(policy.spec.target, registry, ("spec", "target"))
    return []


def _unknown_agent(name: str, registry: RegistryView, at: Path) -> list[Problem]:
    if name in registry.agents:
        return []
    return [Problem(at, f"agent {name!r} is not registered; the policy applies once it registers", "warning")]


def _listing(values: Iterable[str]) -> str:
    names = sorted(values)
    return ", ".join(names) if names else "none"


def _method_problem(method: str, agents: Mapping[str, KnownAgent], at: Path) -> Problem | None:
    """A method no agent in `agents` (all registered) serves; None when one does."""
    service, _, name = method.partition("/")
    who = ", ".join(sorted(agents))
    if not any(service in agent.services for agent in agents.values()):
        served = {s for agent in agents.values() for s in agent.services}
        return Problem(at, f"{who} does not serve {service} (serves: {_listing(served)})")
    if name != "*" and not any(method in agent.methods for agent in agents.values()):
        known = {m.partition("/")[2] for agent in agents.values() for m in agent.methods if m.startswith(service + "/")}
        return Problem(at, f"{service} has no method {name!r} (methods: {_listing(known)})")
    return None


def _traffic_registry(policy: TrafficPolicy, registry: RegistryView) -> list[Problem]:
    spec = policy.spec
    splits: list[tuple[Path, tuple[Backend, ...]]] = [(("spec", "split"), spec.split)]
    methods: list[tuple[Path, str]] = []
    for index, route in enumerate(spec.routes):
        splits.append((("spec", "routes", index, "split"), route.split))
        for m_index, match in enumerate(route.match):
            if match.method is not None:
                methods.append((("spec", "routes", index, "match", m_index, "method"), match.method))
    if is_service_name(spec.target):
        return _service_traffic_registry(spec.target, splits, methods, registry)
    agent = registry.agents.get(spec.target)
    if agent is None:
        return _unknown_agent(spec.target, registry, ("spec", "target"))
    problems = []
    for at, split in splits:
        for index, backend in enumerate(split):
            if backend.version is not None and backend.version not in agent.versions:
                reason = (
                    f"version {backend.version!r} of {spec.target} is not registered "
                    f"(registered: {_listing(agent.versions)})"
                )
                problems.append(Problem((*at, index, "version"), reason))
    for at, method in methods:
        problem = _method_problem(method, {spec.target: agent}, at)
        if problem is not None:
            problems.append(problem)
    return problems


def _service_traffic_registry(
    service: str,
    splits: list[tuple[Path, tuple[Backend, ...]]],
    methods: list[tuple[Path, str]],
    registry: RegistryView,
) -> list[Problem]:
    implementers = {name: agent for name, agent in registry.agents.items() if service in agent.services}
    problems = []
    if not implementers:
        reason = f"no registered agent implements {service}; the policy applies once one registers"
        problems.append(Problem(("spec", "target"), reason, "warning"))
    for at, split in splits:
        for index, backend in enumerate(split):
            if backend.agent is None:
                continue
            here = (*at, index)
            agent = registry.agents.get(backend.agent)
            if agent is None:
                problems += _unknown_agent(backend.agent, registry, (*here, "agent"))
            elif service not in agent.services:
                problems.append(Problem((*here, "agent"), f"{backend.agent} does not implement {service}"))
            elif backend.version is not None and backend.version not in agent.versions:
                reason = (
                    f"version {backend.version!r} of {backend.agent} is not registered "
                    f"(registered: {_listing(agent.versions)})"
                )
                problems.append(Problem((*here, "version"), reason))
    if implementers:
        for at, method in methods:
            if method_service(method) != service:
                continue  # reported by semantic_problems
            problem = _method_problem(method, implementers, at)
            if problem is not None:
                problems.append(problem)
    return problems


def _unregistered_callers(rule: AccessRule, registry: RegistryView, at: Path) -> list[Problem]:
    problems = []
    for a_index, name in enumerate(rule.from_.agents if rule.from_ is not None else ()):
        if name != "*" and name not in registry.agents:
            reason = f"agent {name!r} is not registered; the rule applies once it registers"
            problems.append(Problem((*at, "from", "agents", a_index), reason, "warning"))
    return problems


def _access_registry(policy: AccessPolicy, registry: RegistryView) -> list[Problem]:
    spec = policy.spec
    if spec.mesh_wide:
        return _mesh_wide_registry(spec, registry)
    problems = _unknown_agent(spec.target, registry, ("spec", "target"))
    target = registry.agents.get(spec.target)
    for index, rule in enumerate(spec.rules):
        at: Path = ("spec", "rules", index)
        problems += _unregistered_callers(rule, registry, at)
        if rule.to is None or target is None:
            continue
        for s_index, service in enumerate(rule.to.services):
            if service not in target.services:
                reason = f"{spec.target} does not serve {service} (serves: {_listing(target.services)})"
                problems.append(Problem((*at, "to", "services", s_index), reason))
        for m_index, method in enumerate(rule.to.methods):
            problem = _method_problem(method, {spec.target: target}, (*at, "to", "methods", m_index))
            if problem is not None:
                problems.append(problem)
    return problems


def _mesh_wide_registry(spec: AccessPolicySpec, registry: RegistryView) -> list[Problem]:
    """A mesh-wide rule applies to every agent: a service or method no registered agent serves is only a warning."""
    problems = []
    for index, rule in enumerate(spec.rules):
        at: Path = ("spec", "rules", index)
        problems += _unregistered_callers(rule, registry, at)
        if rule.to is None or not registry.agents:
            continue
        for s_index, service in enumerate(rule.to.services):
            if not any(service in agent.services for agent in registry.agents.values()):
                reason = f"no registered agent serves {service}; the rule applies once one does"
                problems.append(Problem((*at, "to", "services", s_index), reason, "warning"))
        for m_index, method in enumerate(rule.to.methods):
            problem = _method_problem(method, registry.agents, (*at, "to", "methods", m_index))
            if problem is not None:
                reason = f"no registered agent serves {method}; the rule applies once one does"
                problems.append(Problem(problem.path, reason, "warning"))
    return problems
