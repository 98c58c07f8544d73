"""agentmesh.v1.ControlPlane: the admin API the `agentmesh` CLI calls.

Policy changes (apply, delete, rollback) are validated, stored as a new
mesh-wide version and announced with `on_policy_change()` so the publisher
translates and pushes them; reads serve the store (policies, history), the
registry (agents), the xDS server with its ACK tracker (proxy sync state) and
a lint of the stored set against the registry (check).

Errors: every refusal inside raises `AdminError`; `_answer` is the one place
that turns it into a gRPC status. Invalid policy is INVALID_ARGUMENT whose
message lists every issue as `file:line: path: reason`, with one
`google.rpc.BadRequest` field violation per issue (field `file:line path`);
unknown kinds, names and versions are NOT_FOUND (or INVALID_ARGUMENT for a
kind that does not exist); other refusals of the store are
FAILED_PRECONDITION.

Who may call what is decided before a call gets here (control_plane/api/auth.py:
the bearer token, then the role each RPC needs); a call that arrives runs with
its authenticated `Caller`. Every change is recorded with the caller's
credential name as its author: the request's `author` field is a claim
nobody checked, so it is only logged (as `requested_author`). A credential
scoped to teams may change only its teams' agents' policies: the policy store
runs the scope check (control_plane/access/scope.py) inside the change's
transaction, on the documents the change adds, changes or removes; a refusal
is PERMISSION_DENIED naming the out-of-scope agents, counted and logged with
the other refusals. The credential RPCs (CreateCredential, ListCredentials,
RevokeCredential, WhoAmI) serve the credential store.

The store is synchronous SQLite: its calls, and parsing and validating
documents, run in a worker thread (`asyncio.to_thread`); the registry and the
tracker are read on the event-loop thread, where they live.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from agentmesh.config import ConfigError, ConfigIssue
from agentmesh.v1 import control_pb2, control_pb2_grpc
from control_plane.access.credentials import (
    CredentialError,
    CredentialRecord,
    CredentialStore,
    UnknownCredentialError,
)
from control_plane.access.roles import BOOTSTRAP_ID, BOOTSTRAP_NAME, ROLES, Caller
from control_plane.access.scope import ScopeError, TeamDirectory, check_scope
from control_plane.api.auth import SCOPE, AccessRefused, AdminRefusals, caller
from control_plane.api.check import check_mesh
from control_plane.api.status import agent_statuses, datetime_timestamp, proxy_syncs
from control_plane.policy.model import KINDS, Policy, PolicyRef, render_yaml
from control_plane.policy.store import ChangeGuard, ChangeResult, PolicyStore, PolicyStoreError, VersionInfo
from control_plane.policy.validate import PolicyDocument, RegistryView, parse_documents, validate_documents
from control_plane.registry import Registry
from control_plane.registry.view import mesh_view
from control_plane.xds.ack_tracker import AckTracker
from control_plane.xds.ads_server import AggregatedDiscoveryService

if TYPE_CHECKING:
    from control_plane.api.tokens import JoinTokenAdmin

log = logging.getLogger(__name__)

UNNAMED_FILE = "<unnamed>"

_T = TypeVar("_T")


class AdminError(Exception):
    """A refused admin call: the gRPC code, a message, and the policy issues behind it (if any)."""

    def __init__(self, code: grpc.StatusCode, message: str, issues: Sequence[ConfigIssue] = ()) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.issues = tuple(issues)

    @classmethod
    def invalid_policy(cls, issues: Sequence[ConfigIssue]) -> AdminError:
        return cls(grpc.StatusCode.INVALID_ARGUMENT, "\n".join(str(issue) for issue in issues), issues)


def rpc_status_of(error: AdminError) -> status_pb2.Status:
    """The google.rpc.Status of a refusal, with BadRequest field violations for policy issues."""
    status = status_pb2.Status(code=error.code.value[0], message=error.message)
    if error.issues:
        bad = error_details_pb2.BadRequest()
        for issue in error.issues:
            where = f"{issue.source}:{issue.line}" if issue.line else issue.source
            bad.field_violations.add(field=f"{where} {issue.path}".rstrip(), description=issue.reason)
        status.details.add().Pack(bad)
    return status


async def _answer(context: grpc.aio.ServicerContext[Any, Any], work: Awaitable[_T]) -> _T:
    """Awaits one call's work; an AdminError ends the call with its status (the API's only error boundary)."""
    try:
        return await work
    except AdminError as exc:
        status = rpc_status.to_status(rpc_status_of(exc))
        await context.abort(status.code, status.details, status.trailing_metadata)


def _refs(refs: Iterable[PolicyRef]) -> list[control_pb2.PolicyRef]:
    return [control_pb2.PolicyRef(kind=ref.kind, name=ref.name) for ref in refs]


def _change_message(result: ChangeResult, warnings: Iterable[ConfigIssue] = ()) -> control_pb2.PolicyChange:
    # A dry run that changes something reports the would-be version; the API reports the version in force.
    version = result.version - 1 if result.dry_run and not result.is_noop else result.version
    return control_pb2.PolicyChange(
        version=version,
        dry_run=result.dry_run,
        added=_refs(result.added),
        changed=_refs(result.changed),
        removed=_refs(result.removed),
        unchanged=_refs(result.unchanged),
        diff=result.diff,
        warnings=[str(warning) for warning in warnings],
    )


def _version_message(info: VersionInfo) -> control_pb2.PolicyVersion:
    return control_pb2.PolicyVersion(
        version=info.version,
        author=info.author,
        time=datetime_timestamp(info.created_at),
        message=info.message,
        added=_refs(info.added),
        changed=_refs(info.changed),
        removed=_refs(info.removed),
        diff=info.diff,
    )


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise AdminError(grpc.StatusCode.INVALID_ARGUMENT, f"unknown kind {kind!r}: expected one of {', '.join(KINDS)}")


class AdminService(control_pb2_grpc.ControlPlaneServicer):
    """The ControlPlane servicer (grpc.aio).

    `snapshot_version()` names the xDS snapshot being served; `on_policy_change()`
    is called after every change that created a policy version. `clock` is the
    registry's clock (its instance times are in that clock's seconds) and
    `wall_clock` turns them into the times the CLI shows. `credentials` is the
    credential store (the credential RPCs answer FAILED_PRECONDITION without
    one); `refusals` counts scope refusals with the interceptor's.
    """

    def __init__(
        self,
        *,
        store: PolicyStore,
        registry: Registry,
        tracker: AckTracker,
        ads: AggregatedDiscoveryService,
        snapshot_version: Callable[[], str],
        on_policy_change: Callable[[], None],
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        credentials: CredentialStore | None = None,
        refusals: AdminRefusals | None = None,
        join_tokens: JoinTokenAdmin | None = None,
    ) -> None:
        self._store = store
        self._registry = registry
        self._tracker = tracker
        self._ads = ads
        self._snapshot_version = snapshot_version
        self._on_policy_change = on_policy_change
        self._clock = clock
        self._wall_clock = wall_clock
        self._credentials = credentials
        self._refusals = refusals or AdminRefusals()
        self._join_tokens = join_tokens

    def __repr__(self) -> str:
        return f"AdminService(store={self._store!r})"

    # --- policy ---------------------------------------------------------------------------------------------------

    async def ApplyPolicies(
        self, request: control_pb2.ApplyPoliciesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> control_pb2.PolicyChange:
        return await _answer(context, self._apply(request, caller(context)))

    async def _apply(self, request: control_pb2.ApplyPoliciesRequest, who: Caller) -> control_pb2.PolicyChange:
        if not request.files:
            raise AdminError(grpc.StatusCode.INVALID_ARGUMENT, "no policy files given")
        view = mesh_view(self._registry)
        files = [(f.name or UNNAMED_FILE, f.content) for f in request.files]
        documents, warnings = await asyncio.to_thread(self._validate, files, view, request.prune)
        policies = [document.policy for document in documents]
        guard = self._scope_guard(who)
        result = await self._change(
            lambda: self._store.apply(
                policies, who.name, request.dry_run, message=request.message, prune=request.prune, guard=guard
            ),
            who=who,
            method="ApplyPolicies",
            requested_author=request.author,
        )
        return _change_message(result, warnings)

    def _validate(
        self, files: Sequence[tuple[str, str]], view: RegistryView, prune: bool
    ) -> tuple[list[PolicyDocument], tuple[ConfigIssue, ...]]:
        """Parses and validates every file; raises AdminError listing every error of every file."""
        documents: list[PolicyDocument] = []
        errors: list[ConfigIssue] = []
        for name, content in files:
            found, issues = parse_documents(content, name)
            documents += found
            errors += issues
        # With prune the given documents become the whole set, so stored ones cannot conflict with them.
        stored: Sequence[Policy] = () if prune else self._store.current().policies
        report = validate_documents(documents, registry=view, stored=stored)
        errors += report.errors
        if errors:
            raise AdminError.invalid_policy(errors)
        if not documents:
            names = ", ".join(name for name, _ in files)
            raise AdminError(grpc.StatusCode.INVALID_ARGUMENT, f"no policy documents in {names}")
        return documents, report.warnings

    async def DeletePolicy(
        self, request: control_pb2.DeletePolicyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> control_pb2.PolicyChange:
        return await _answer(context, self._delete(request, caller(context)))

    async def _delete(self, request: control_pb2.DeletePolicyRequest, who: Caller) -> control_pb2.PolicyChange:
        _check_kind(request.kind)
        if not request.name:
            raise AdminError(grpc.StatusCode.INVALID_ARGUMENT, "name the policy to delete")
        guard = self._scope_guard(who)
        result = await self._change(
            lambda: self._store.delete(request.kind, request.name, who.name, dry_run=request.dry_run, guard=guard),
            who=who,
            method="DeletePolicy",
            requested_author=request.author,
            refused=grpc.StatusCode.NOT_FOUND,
        )
        return _change_message(result)

    async def RollbackPolicies(
        self, request: control_pb2.RollbackPoliciesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> control_pb2.PolicyChange:
        return await _answer(context, self._rollback(request, caller(context)))

    async def _rollback(self, request: control_pb2.RollbackPoliciesRequest, who: Caller) -> control_pb2.PolicyChange:
        guard = self._scope_guard(who)
        result = await self._change(
            lambda: self._store.rollback(request.version, who.name, dry_run=request.dry_run, guard=guard),
            who=who,
            method="RollbackPolicies",
            requested_author=request.author,
            refused=grpc.StatusCode.NOT_FOUND,
        )
        return _change_message(result)

    def _scope_guard(self, who: Caller) -> ChangeGuard | None:
        """The store guard that keeps a team-scoped caller's change to its teams' agents; None when unscoped.

        The registry is read here, on its thread; the guard runs in the store's worker thread.
        """
        if not who.scoped:
            return None
        directory = TeamDirectory.from_instances(self._registry.instances())
        return lambda policies: check_scope(who.teams, policies, directory)

    async def _change(
        self,
        operation: Callable[[], ChangeResult],
        *,
        who: Caller,
        method: str,
        requested_author: str = "",
        refused: grpc.StatusCode = grpc.StatusCode.FAILED_PRECONDITION,
    ) -> ChangeResult:
        """Runs one store change in a worker thread; announces it when it created a version."""
        try:
            result = await asyncio.to_thread(operation)
        except ScopeError as exc:
            refusal = AccessRefused(grpc.StatusCode.PERMISSION_DENIED, SCOPE, f"{method}: {exc}", who)
            self._refusals.record(method, refusal)
            raise AdminError(refusal.code, refusal.message) from exc
        except PolicyStoreError as exc:
            raise AdminError(refused, str(exc)) from exc
        except ConfigError as exc:
            # The store's own set-wide check (a concurrent change made the set conflict).
            raise AdminError.invalid_policy(exc.issues) from exc
        if result.created:
            log.info(
                "policy version created",
                extra={
                    "policy_version": result.version,
                    "author": who.name,
                    "credential_id": who.credential_id,
                    "requested_author": requested_author,
                    "added": [str(r) for r in result.added],
                    "changed": [str(r) for r in result.changed],
                    "removed": [str(r) for r in result.removed],
                },
            )
            self._on_policy_change()
        return result

    async def GetPolicies(
        self, request: control_pb2.GetPoliciesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> control_pb2.PolicyList:
        return await _answer(context, self._get(request))

    async def _get(self, request: control_pb2.GetPoliciesRequest) -> control_pb2.PolicyList:
        kind, name = request.kind or None, request.name or None
        if kind is not None:
            _check_kind(kind)
        elif name is not None:
            raise AdminError(grpc.StatusCode.INVALID_ARGUMENT, "a name needs a kind")
        if request.version < 0:
            raise AdminError(grpc.StatusCode.INVALID_ARGUMENT, "version must not be negative")
        version, policies = await self._read(kind, name, request.version)
        if name is not None and not policies:
            raise AdminError(grpc.StatusCode.NOT_FOUND, f"{kind}/{name} not found at version {version}")
        return control_pb2.PolicyList(
            version=version,
            policies=[
                control_pb2.StoredPolicy(kind=p.kind, name=p.metadata.name, yaml=render_yaml(p)) for p in policies
            ],
        )

    async def _read(self, kind: str | None, name: str | None, version: int) -> tuple[int, list[Policy]]:
        if version == 0:
            current = await asyncio.to_thread(self._store.current)
            wanted = [
                p for p in current.policies if (kind is None or p.kind == kind) and (name is None or p.ref.name == name)
            ]
            return current.version, wanted
        try:
            return version, await asyncio.to_thread(self._store.get, kind, name, version)
        except PolicyStoreError as exc:
            raise AdminError(grpc.StatusCode.NOT_FOUND, str(exc)) from exc

    async def PolicyHistory(
        self, request: control_pb2.PolicyHistoryRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> control_pb2.PolicyHistoryResponse:
        # limit 0: every version.
        history = await asyncio.to_thread(self._store.history, request.limit or None)
        return control_pb2.PolicyHistoryResponse(versions=[_version_message(info) for info in history])

    # --- the running mesh -----------------------------------------------------------------------------------------

    async def ListAgents(
        self, request: control_pb2.ListAgentsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> control_pb2.ListAgentsResponse:
        return await _answer(context, self._agents(request.name))

    async def _agents(self, name: str) -> control_pb2.ListAgentsResponse:
        instances = self._registry.instances(agent=name or None)
        if name and not instances:
            known = ", ".join(self._registry.agents()) or "none"
            raise AdminError(grpc.StatusCode.NOT_FOUND, f"agent {name!r} is not registered (registered: {known})")
        offset = self._wall_clock() - self._clock()
        return control_pb2.ListAgentsResponse(agents=agent_statuses(instances, wall_time=lambda t: t + offset))

    async def ProxyStatus(
        self, request: control_pb2.ProxyStatusRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> control_pb2.ProxyStatusResponse:
        return control_pb2.ProxyStatusResponse(
            snapshot_version=self._snapshot_version(),
            proxies=proxy_syncs(self._ads.connected_nodes(), self._tracker),
        )

    async def Check(
        self, request: control_pb2.CheckRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> control_pb2.CheckResponse:
        view = mesh_view(self._registry)
        current = await asyncio.to_thread(self._store.current)
        findings = check_mesh(current.policies, view)
        return control_pb2.CheckResponse(
            findings=[control_pb2.Finding(severity=f.severity, subject=f.subject, message=f.message) for f in findings]
        )

    # --- join tokens and the CA (control_plane/api/tokens.py) -----------------------------------------------------

    async def CreateJoinToken(
        self, request: control_pb2.CreateJoinTokenRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> control_pb2.JoinToken:
        return await _answer(context, self._identity(lambda admin: admin.create(request, context)))

    async def ListJoinTokens(
        self, request: control_pb2.ListJoinTokensRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> control_pb2.ListJoinTokensResponse:
        return await _answer(context, self._identity(lambda admin: admin.list_tokens(request, context)))

    async def RevokeJoinToken(
        self, request: control_pb2.RevokeJoinTokenRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> control_pb2.JoinToken:
        return await _answer(context, self._identity(lambda admin: admin.revoke(request, context)))

    async def GetCertificateAuthority(
        self, request: control_pb2.GetCertificateAuthorityRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> control_pb2.CertificateAuthority:
        return await _answer(context, self._identity(lambda admin: admin.certificate_authority(request, context)))

    async def _identity(self, call: Callable[[JoinTokenAdmin], Awaitable[_T]]) -> _T:
        if self._join_tokens is None:
            raise AdminError(grpc.StatusCode.UNIMPLEMENTED, "this control plane runs without a certificate authority")
        return await call(self._join_tokens)

    # --- credentials ----------------------------------------------------------------------------------------------

    def _credential_store(self) -> CredentialStore:
        if self._credentials is None:
            raise AdminError(grpc.StatusCode.FAILED_PRECONDITION, "this control plane keeps no credential store")
        return self._credentials

    async def CreateCredential(
        self, request: control_pb2.CreateCredentialRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> control_pb2.Credential:
        return await _answer(context, self._create_credential(request, caller(context)))

    async def _create_credential(
        self, request: control_pb2.CreateCredentialRequest, who: Caller
    ) -> control_pb2.Credential:
        store = self._credential_store()
        if not request.role:
            raise AdminError(grpc.StatusCode.INVALID_ARGUMENT, f"role: required, one of {', '.join(ROLES)}")
        ttl = request.ttl.ToTimedelta() if request.HasField("ttl") else None
        try:
            issued = await asyncio.to_thread(
                lambda: store.create(request.name, request.role, teams=request.teams, ttl=ttl, created_by=who.name)
            )
        except CredentialError as exc:
            raise AdminError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from exc
        record = issued.record
        log.info(
            "credential created",
            extra={
                "credential_id": record.id,
                "credential": record.name,
                "role": record.role.value,
                "teams": list(record.teams),
                "expires": record.expires_at.isoformat() if record.expires_at else None,
                "author": who.name,
            },
        )
        return credential_message(record, secret=issued.token)

    async def ListCredentials(
        self, request: control_pb2.ListCredentialsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> control_pb2.ListCredentialsResponse:
        return await _answer(context, self._list_credentials(request.all))

    async def _list_credentials(self, include_inactive: bool) -> control_pb2.ListCredentialsResponse:
        store = self._credential_store()
        records = await asyncio.to_thread(lambda: store.records(include_inactive=include_inactive))
        return control_pb2.ListCredentialsResponse(credentials=[credential_message(record) for record in records])

    async def RevokeCredential(
        self, request: control_pb2.RevokeCredentialRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> control_pb2.Credential:
        return await _answer(context, self._revoke_credential(request.id, caller(context)))

    async def _revoke_credential(self, credential_id: str, who: Caller) -> control_pb2.Credential:
        store = self._credential_store()
        if not credential_id:
            raise AdminError(
                grpc.StatusCode.INVALID_ARGUMENT, "id: name the credential to revoke (see ListCredentials)"
            )
        if credential_id == BOOTSTRAP_ID:
            raise AdminError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"{BOOTSTRAP_NAME} is the control plane's own --token and cannot be revoked: restart the control "
                "plane with another token to replace it",
            )
        try:
            record = await asyncio.to_thread(store.revoke, credential_id)
        except UnknownCredentialError as exc:
            raise AdminError(grpc.StatusCode.NOT_FOUND, str(exc)) from exc
        log.info(
            "credential revoked", extra={"credential_id": record.id, "credential": record.name, "author": who.name}
        )
        return credential_message(record)

    async def WhoAmI(
        self, request: control_pb2.WhoAmIRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> control_pb2.Credential:
        return await _answer(context, self._whoami(caller(context)))

    async def _whoami(self, who: Caller) -> control_pb2.Credential:
        if who.is_bootstrap or self._credentials is None:
            return control_pb2.Credential(
                id=who.credential_id, name=who.name, role=who.role.value, teams=list(who.teams)
            )
        store = self._credentials
        try:
            return credential_message(await asyncio.to_thread(store.get, who.credential_id))
        except UnknownCredentialError as exc:
            raise AdminError(grpc.StatusCode.NOT_FOUND, str(exc)) from exc


def credential_message(record: CredentialRecord, *, secret: str = "") -> control_pb2.Credential:
    """The API form of a stored credential; the token only when it was just created."""
    message = control_pb2.Credential(
        id=record.id,
        name=record.name,
        role=record.role.value,
        teams=list(record.teams),
        created=datetime_timestamp(record.created_at),
        revoked=record.revoked_at is not None,
        created_by=record.created_by,
        secret=secret,
    )
    if record.expires_at is not None:
        message.expires.CopyFrom(datetime_timestamp(record.expires_at))
    return message
