"""`agentmesh policy`: apply, read, delete, roll back and validate mesh policy.

Thin commands over the control plane's admin API (validate runs offline).
Output follows kubectl: `trafficpolicy/researcher-canary configured`, tables
for people and `-o json|yaml` for scripts. Kinds are written as in YAML
(`TrafficPolicy`) or by alias, case-insensitively: `trafficpolicy`,
`trafficpolicies`, `tp`; `accesspolicy`, `accesspolicies`, `ap`;
`agentconfig`, `agentconfigs`, `ac`.

Exit codes: 0 done; 1 the control plane refused or failed the call (unknown
policy or version, bad token, ...); 2 invalid input (policy errors, named
file:line: field: reason, or unreadable files); 3 the control plane cannot
be reached.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

import click
import yaml

from agentmesh.cli._client import AdminClient, author, connection_options
from agentmesh.cli._output import (
    CliError,
    InvalidInputError,
    emit,
    message_data,
    note,
    output_option,
    table,
    utc_time,
    warn,
    when,
)
from agentmesh.v1 import control_pb2
from control_plane.policy.model import KINDS
from control_plane.policy.validate import YAML_SUFFIXES, validate_paths

STDIN: Final = "-"


def _aliases() -> MappingProxyType[str, str]:
    found: dict[str, str] = {}
    for kind in KINDS:
        lower = kind.lower()
        plural = lower[:-1] + "ies" if lower.endswith("y") else lower + "s"
        short = "".join(ch for ch in kind if ch.isupper()).lower()
        for alias in (lower, plural, short):
            found[alias] = kind
    return MappingProxyType(found)


# Every accepted spelling of a kind (lower-cased) -> the kind as written in YAML.
KIND_ALIASES: Final = _aliases()


def resolve_kind(text: str) -> str | None:
    """'tp', 'TrafficPolicies', 'trafficpolicy' -> 'TrafficPolicy'; None when unknown."""
    return KIND_ALIASES.get(text.lower())


class KindType(click.ParamType):
    """A policy kind or one of its aliases."""

    name = "KIND"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        kind = resolve_kind(str(value))
        if kind is None:
            choices = "; ".join(
                f"{known} ({', '.join(a for a, k in KIND_ALIASES.items() if k == known)})" for known in KINDS
            )
            self.fail(f"unknown kind {value!r}: expected one of {choices}", param, ctx)
        return kind


KIND = KindType()


def display(ref: control_pb2.PolicyRef) -> str:
    """How kubectl names an object: lower-case kind / name."""
    return f"{ref.kind.lower()}/{ref.name}"


@click.group()
@connection_options
def policy() -> None:
    """Apply, read, delete and roll back mesh policy.

    Policy is YAML (TrafficPolicy, AccessPolicy, AgentConfig; see
    docs/policy.md) stored by the control plane with every version kept.
    Kinds may be written as in YAML or by alias: trafficpolicy,
    trafficpolicies, tp; accesspolicy, accesspolicies, ap; agentconfig,
    agentconfigs, ac.

    \b
    Examples:
      agentmesh policy apply -f examples/policies/
      agentmesh policy get tp
      agentmesh policy history
      agentmesh policy rollback 3

    Exit codes: 0 done, 1 refused or failed, 2 invalid input, 3 control plane
    unreachable.
    """


# --- apply --------------------------------------------------------------------------------------------------------


def _read_files(paths: Sequence[str]) -> list[control_pb2.PolicyFile]:
    """Reads files, directories (recursively, *.yaml and *.yml, in name order) and '-' (stdin)."""
    files: list[control_pb2.PolicyFile] = []
    problems: list[str] = []
    for given in paths:
        if given == STDIN:
            files.append(control_pb2.PolicyFile(name="<stdin>", content=sys.stdin.read()))
            continue
        path = Path(given)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix in YAML_SUFFIXES and p.is_file())
            if not found:
                problems.append(f"{given}: no .yaml or .yml files in this directory")
        elif path.exists():
            found = [path]
        else:
            problems.append(f"{given}: no such file or directory")
            continue
        for file in found:
            try:
                files.append(control_pb2.PolicyFile(name=str(file), content=file.read_text()))
            except (OSError, UnicodeDecodeError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
                problems.append(f"{file}: cannot read: {reason}")
    if problems:
        raise InvalidInputError("\n".join(problems))
    return files


def _report_change(change: control_pb2.PolicyChange, *, show_diff: bool, show_unchanged: bool = False) -> None:
    """kubectl-style lines per document, the diff when asked, and the resulting version."""
    suffix = " (dry run)" if change.dry_run else ""
    verbs = (
        (change.added, "created"),
        (change.changed, "configured"),
        (change.unchanged if show_unchanged else (), "unchanged"),
        (change.removed, "deleted"),
    )
    lines = sorted((ref.kind, ref.name, verb) for refs, verb in verbs for ref in refs)
    for kind, name, verb in lines:
        click.echo(f"{kind.lower()}/{name} {verb}{suffix}")
    for warning in change.warnings:
        warn(warning)
    if show_diff and change.diff:
        click.echo()
        click.echo(change.diff, nl=False)
    if change.dry_run:
        note(f"dry run: nothing stored (policy version {change.version})")
    elif not (change.added or change.changed or change.removed):
        note(f"no changes (policy version {change.version})")
    else:
        note(f"policy version {change.version}")


@policy.command()
@click.option(
    "-f",
    "--filename",
    "paths",
    multiple=True,
    required=True,
    metavar="FILE|DIR",
    help="A policy file, a directory (read recursively) or '-' for stdin; repeat for more.",
)
@click.option("--dry-run", is_flag=True, help="Validate and show what would change and the diff; store nothing.")
@click.option("--diff", "show_diff", is_flag=True, help="Also print the diff of a real change.")
@click.option("--prune", is_flag=True, help="Delete stored policies that are not in the given files.")
@click.option("-m", "--message", default="", help="Why: recorded in the policy history.")
@connection_options
def apply(paths: tuple[str, ...], dry_run: bool, show_diff: bool, prune: bool, message: str) -> None:
    """Validate policy files and store them as a new policy version.

    Documents are added or replaced by kind and name; with --prune, stored
    documents not in the files are deleted. Nothing is stored when any
    document has an error; errors are printed as file:line: field: reason.
    Warnings (e.g. an agent that is not registered yet) are printed and do
    not block the change.

    \b
    Examples:
      agentmesh policy apply -f examples/policies/
      agentmesh policy apply -f canary.yaml --dry-run
      cat canary.yaml | agentmesh policy apply -f - -m "canary 10%"

    Exit codes: 0 applied (or nothing to change), 1 refused, 2 invalid
    policy, 3 control plane unreachable.
    """
    files = _read_files(paths)
    request = control_pb2.ApplyPoliciesRequest(
        files=files, author=author(), message=message, dry_run=dry_run, prune=prune
    )
    with AdminClient.from_context() as client:
        change = client.call("ApplyPolicies", request)
    _report_change(change, show_diff=dry_run or show_diff, show_unchanged=True)


# --- get / describe -----------------------------------------------------------------------------------------------


def _summary(document: dict[str, Any]) -> str:
    """One line about what a document does, for the table."""
    spec = document.get("spec") or {}
    kind = document.get("kind")
    parts: list[str] = []
    if kind == "TrafficPolicy":
        split = spec.get("split") or []
        if split:
            parts.append("split " + " ".join(_backend(backend) for backend in split))
        routes = len(spec.get("routes") or [])
        if routes:
            parts.append(f"{routes} route{'s' if routes != 1 else ''}")
        if spec.get("timeout"):
            parts.append(f"timeout {spec['timeout']}")
        if spec.get("retries"):
            parts.append(f"retries {spec['retries'].get('attempts', 2)}")
    elif kind == "AccessPolicy":
        rules = len(spec.get("rules") or [])
        parts.append(f"default {spec.get('default_action', 'deny')}")
        parts.append(f"{rules} rule{'s' if rules != 1 else ''}")
    elif kind == "AgentConfig":
        values = spec.get("values") or {}
        parts.append(
            f"{len(values)} value{'s' if len(values) != 1 else ''}" + (f": {', '.join(values)}" if values else "")
        )
    return ", ".join(parts)


def _backend(backend: dict[str, Any]) -> str:
    """'v2:10', 'researcher:70' or 'researcher/v3:30'."""
    who = "/".join(str(backend[key]) for key in ("agent", "version") if backend.get(key))
    return f"{who}:{backend.get('weight')}"


def _documents(policies: Iterable[control_pb2.StoredPolicy]) -> list[dict[str, Any]]:
    return [yaml.safe_load(p.yaml) for p in policies]


@policy.command()
@click.argument("kind", type=KIND, required=False)
@click.argument("name", required=False)
@click.option("--version", type=click.IntRange(min=0), default=0, help="A past policy version (default: current).")
@output_option
@connection_options
def get(kind: str | None, name: str | None, version: int, output: str) -> None:
    """List stored policies, or print them as YAML or JSON.

    -o yaml prints the documents themselves (one YAML stream, documents
    separated by ---), ready to edit and apply again; -o json prints
    {"version": N, "items": [...]}.

    \b
    Examples:
      agentmesh policy get
      agentmesh policy get tp researcher-canary -o yaml
      agentmesh policy get accesspolicies --version 3 -o json
    """
    request = control_pb2.GetPoliciesRequest(kind=kind or "", name=name or "", version=version)
    with AdminClient.from_context() as client:
        listing = client.call("GetPolicies", request)
    documents = _documents(listing.policies)
    if output == "yaml":
        click.echo("---\n".join(p.yaml for p in listing.policies), nl=False)
        return
    if output == "table" and not documents:
        note(f"No policies found (policy version {listing.version}).")
        return
    rows = [
        (p.kind, p.name, (doc.get("spec") or {}).get("target"), _summary(doc))
        for p, doc in zip(listing.policies, documents, strict=True)
    ]
    emit(
        output,
        {"version": listing.version, "items": documents},
        lambda: table(("kind", "name", "target", "summary"), rows),
    )


def _touching(
    history: Iterable[control_pb2.PolicyVersion], kind: str, name: str
) -> list[tuple[int, str, str, str, str]]:
    """(version, time, author, what happened, message) for each version that changed one document."""
    found = []
    for entry in history:
        for refs, verb in ((entry.added, "created"), (entry.changed, "configured"), (entry.removed, "deleted")):
            if any(ref.kind == kind and ref.name == name for ref in refs):
                found.append((entry.version, utc_time(when(entry.time)), entry.author, verb, entry.message))
    return found


@policy.command()
@click.argument("kind", type=KIND)
@click.argument("name")
@connection_options
def describe(kind: str, name: str) -> None:
    """Show one policy: its YAML and the versions that changed it.

    \b
    Example:
      agentmesh policy describe trafficpolicy researcher-canary
    """
    with AdminClient.from_context() as client:
        listing = client.call("GetPolicies", control_pb2.GetPoliciesRequest(kind=kind, name=name))
        history = client.call("PolicyHistory", control_pb2.PolicyHistoryRequest(limit=0))
    if not listing.policies:
        raise CliError(f"{kind}/{name} not found")
    stored = listing.policies[0]
    document = yaml.safe_load(stored.yaml)
    click.echo(f"Name:     {name}")
    click.echo(f"Kind:     {kind}")
    click.echo(f"Target:   {(document.get('spec') or {}).get('target')}")
    click.echo(f"Summary:  {_summary(document)}")
    click.echo(f"Version:  {listing.version} (current)")
    click.echo("History:")
    click.echo(
        table(("version", "time", "author", "change", "message"), _touching(history.versions, kind, name), indent="  ")
    )
    click.echo("Document:")
    for line in stored.yaml.splitlines():
        click.echo(f"  {line}")


# --- delete / history / rollback ----------------------------------------------------------------------------------


@policy.command()
@click.argument("kind", type=KIND)
@click.argument("name")
@click.option("--dry-run", is_flag=True, help="Show what would be deleted and the diff; store nothing.")
@connection_options
def delete(kind: str, name: str, dry_run: bool) -> None:
    """Delete one policy (a new policy version without it).

    \b
    Examples:
      agentmesh policy delete tp researcher-canary --dry-run
      agentmesh policy delete accesspolicy researcher-access

    Exit codes: 0 deleted, 1 no such policy or refused, 3 unreachable.
    """
    request = control_pb2.DeletePolicyRequest(kind=kind, name=name, author=author(), dry_run=dry_run)
    with AdminClient.from_context() as client:
        change = client.call("DeletePolicy", request)
    _report_change(change, show_diff=dry_run)


def _changes(entry: control_pb2.PolicyVersion) -> str:
    parts = [
        f"{sign}{display(ref)}"
        for refs, sign in ((entry.added, "+"), (entry.changed, "~"), (entry.removed, "-"))
        for ref in refs
    ]
    return " ".join(parts)


@policy.command()
@click.option("--limit", type=click.IntRange(min=0), default=20, show_default=True, help="Newest versions; 0: all.")
@output_option
@connection_options
def history(limit: int, output: str) -> None:
    """List policy versions, newest first.

    CHANGES lists +created, ~configured and -deleted documents. -o json or
    -o yaml include each version's diff.

    \b
    Examples:
      agentmesh policy history
      agentmesh policy history --limit 5 -o yaml
    """
    with AdminClient.from_context() as client:
        response = client.call("PolicyHistory", control_pb2.PolicyHistoryRequest(limit=limit))
    if output == "table" and not response.versions:
        note("No policy versions yet.")
        return
    rows = [(v.version, utc_time(when(v.time)), v.author, _changes(v), v.message) for v in response.versions]
    emit(
        output,
        [message_data(v) for v in response.versions],
        lambda: table(("version", "time", "author", "changes", "message"), rows),
    )


@policy.command()
@click.argument("version", type=click.IntRange(min=0))
@click.option("--dry-run", is_flag=True, help="Show what would change and the diff; store nothing.")
@connection_options
def rollback(version: int, dry_run: bool) -> None:
    """Make a new policy version equal to an older one.

    History only grows: the rollback is itself a version and can be rolled
    back. Version 0 is the empty set.

    \b
    Examples:
      agentmesh policy rollback 3 --dry-run
      agentmesh policy rollback 3

    Exit codes: 0 rolled back (or already equal), 1 no such version or
    refused, 3 unreachable.
    """
    request = control_pb2.RollbackPoliciesRequest(version=version, author=author(), dry_run=dry_run)
    with AdminClient.from_context() as client:
        change = client.call("RollbackPolicies", request)
    _report_change(change, show_diff=dry_run)


# --- validate (offline) -------------------------------------------------------------------------------------------


@policy.command()
@click.option(
    "-f",
    "--filename",
    "paths",
    multiple=True,
    required=True,
    metavar="FILE|DIR",
    help="A policy file or a directory (read recursively); repeat for more.",
)
def validate(paths: tuple[str, ...]) -> None:
    """Check policy files locally, without a control plane.

    Runs every check that needs no registry and no stored policy (see
    docs/policy.md); `policy apply --dry-run` also checks against the
    registry and the stored set.

    \b
    Example:
      agentmesh policy validate -f examples/policies/

    Exit codes: 0 valid, 2 errors.
    """
    documents, report = validate_paths(paths)
    for warning in report.warnings:
        warn(str(warning))
    if report.errors:
        raise InvalidInputError("\n".join(str(error) for error in report.errors))
    click.echo(f"{len(documents)} document{'s' if len(documents) != 1 else ''} valid")
