"""Who may call the admin API: bearer-token authentication and one table of the role each RPC needs.

The control plane serves ADS, sidecar registration, identity, health,
reflection and the admin API on one gRPC port. Only the admin API
(`/agentmesh.v1.ControlPlane/*`) changes or reveals policy, so only its calls
must carry `authorization: Bearer <token>` metadata; every other service
passes through untouched (sidecars and Envoy authenticate with mutual TLS).

A token is either the control plane's own admin token (the `--token` it was
started with: the credential `bootstrap-admin`, role admin, never stored) or
a credential created with CreateCredential (control_plane/access/credentials.py).
Tokens are compared in constant time. Then `REQUIRED_ROLES` decides: every
admin RPC is listed with the role it needs, and an RPC missing from the table
is refused to everyone (fail closed).

Refusals end the call before the servicer runs: UNAUTHENTICATED when the
token is missing, malformed, unknown, expired or revoked, PERMISSION_DENIED
when the role is too low or the RPC is unlisted; the message says which and,
for roles, which role is needed. Team scope (an operator limited to some
teams' agents) depends on the policy documents, so the servicer checks it
(control_plane/access/scope.py) and reports its refusals here too. Each
refusal is logged and counted in `agentmesh_admin_requests_refused_total`
{method, reason}.

An admitted call runs with its `Caller` bound to the task serving it:
servicers read it with `caller(context)`, e.g. to record who made a change.
"""

from __future__ import annotations

import asyncio
import contextvars
import hmac
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, Final

import grpc
from prometheus_client import CollectorRegistry, Counter

from control_plane.access.credentials import CredentialStore
from control_plane.access.roles import BOOTSTRAP_CALLER, BOOTSTRAP_NAME, Caller, Role

log = logging.getLogger(__name__)

PROTECTED_PREFIX: Final = "/agentmesh.v1.ControlPlane/"
AUTHORIZATION: Final = "authorization"
SCHEME: Final = "bearer"

# The role each admin RPC needs (agentmesh.v1.ControlPlane method names). Unlisted methods are refused.
REQUIRED_ROLES: Final[Mapping[str, Role]] = MappingProxyType(
    {
        # Reads: policy, history, the registry, sync state, lint, the CA's public side, oneself.
        "GetPolicies": Role.VIEWER,
        "PolicyHistory": Role.VIEWER,
        "ListAgents": Role.VIEWER,
        "ProxyStatus": Role.VIEWER,
        "Check": Role.VIEWER,
        "GetCertificateAuthority": Role.VIEWER,
        "WhoAmI": Role.VIEWER,
        # Policy changes (team-scoped operators: only their teams' agents).
        "ApplyPolicies": Role.OPERATOR,
        "DeletePolicy": Role.OPERATOR,
        "RollbackPolicies": Role.OPERATOR,
        # Who may join the mesh and who may use this API.
        "CreateJoinToken": Role.ADMIN,
        "ListJoinTokens": Role.ADMIN,
        "RevokeJoinToken": Role.ADMIN,
        "CreateCredential": Role.ADMIN,
        "ListCredentials": Role.ADMIN,
        "RevokeCredential": Role.ADMIN,
    }
)

# Values of the `reason` label of agentmesh_admin_requests_refused_total.
MISSING_TOKEN: Final = "missing_token"
MALFORMED_TOKEN: Final = "malformed_token"
UNKNOWN_TOKEN: Final = "unknown_token"
EXPIRED_TOKEN: Final = "expired_token"
REVOKED_TOKEN: Final = "revoked_token"
ROLE: Final = "role"
SCOPE: Final = "scope"
UNLISTED_METHOD: Final = "unlisted_method"

_CALLER: contextvars.ContextVar[Caller] = contextvars.ContextVar("agentmesh_admin_caller")


class NoCallerError(RuntimeError):
    """A servicer asked for the caller of a call that was not admitted by `TokenAuthInterceptor`."""


def caller(context: grpc.aio.ServicerContext[Any, Any]) -> Caller:
    """The authenticated caller of the admin call `context` serves.

    The interceptor binds it to the task serving the call, so this works in the
    servicer method and in everything it awaits (and in `asyncio.to_thread`
    workers it starts). Raises NoCallerError when the call was not admitted by
    the interceptor: a wiring mistake, never a user's.
    """
    try:
        return _CALLER.get()
    except LookupError:
        raise NoCallerError(
            "no authenticated caller for this call: the admin API must be served behind TokenAuthInterceptor"
        ) from None


class AccessRefused(Exception):
    """An admin call refused: the status code, the `reason` label and a message for the caller."""

    def __init__(self, code: grpc.StatusCode, reason: str, message: str, who: Caller | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.caller = who


class AdminRefusals:
    """Logs and counts refused admin calls: `agentmesh_admin_requests_refused_total{method,reason}`."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self._counter = Counter(
            "agentmesh_admin_requests_refused",
            "Admin API calls refused by authentication, role or team scope.",
            ["method", "reason"],
            registry=registry if registry is not None else CollectorRegistry(),
        )

    def __repr__(self) -> str:
        return "AdminRefusals()"

    def record(self, method: str, refusal: AccessRefused) -> None:
        """Logs one refusal of `method` (e.g. 'ApplyPolicies') and counts it."""
        self._counter.labels(method=method, reason=refusal.reason).inc()
        log.warning(
            "admin call refused",
            extra={
                "rpc_method": method,
                "reason": refusal.reason,
                "detail": refusal.message,
                "credential": refusal.caller.name if refusal.caller else "",
                "credential_id": refusal.caller.credential_id if refusal.caller else "",
            },
        )


def required_role(method: str, table: Mapping[str, Role] = REQUIRED_ROLES) -> Role:
    """The role `method` (a ControlPlane method name) needs; AccessRefused when the table does not list it."""
    role = table.get(method)
    if role is None:
        raise AccessRefused(
            grpc.StatusCode.PERMISSION_DENIED,
            UNLISTED_METHOD,
            f"{method} is not in the admin API's role table, so no credential may call it",
        )
    return role


def authorize(method: str, who: Caller, table: Mapping[str, Role] = REQUIRED_ROLES) -> None:
    """Raises AccessRefused (PERMISSION_DENIED) unless `who`'s role includes the one `method` needs."""
    needed = required_role(method, table)
    if not who.may(needed):
        holders = " or ".join(role.value for role in Role if role.includes(needed))
        raise AccessRefused(
            grpc.StatusCode.PERMISSION_DENIED,
            ROLE,
            f"{method} needs role {holders}; the credential {who.name!r} has role {who.role}",
            who,
        )


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):
    """Authenticates admin API calls (methods under `prefix`) and checks the role each one needs.

    `token` is the bootstrap admin token; `credentials`, when given, holds the
    other credentials. `refusals` counts and logs what is refused.
    """

    def __init__(
        self,
        token: str,
        *,
        credentials: CredentialStore | None = None,
        refusals: AdminRefusals | None = None,
        roles: Mapping[str, Role] = REQUIRED_ROLES,
        prefix: str = PROTECTED_PREFIX,
    ) -> None:
        if not token:
            raise ValueError("the admin token must not be empty")
        self._token = token.encode()
        self._credentials = credentials
        self._refusals = refusals or AdminRefusals()
        self._roles = roles
        self._prefix = prefix

    def __repr__(self) -> str:
        return f"TokenAuthInterceptor(prefix={self._prefix!r}, credentials={self._credentials!r})"

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if handler is None or not handler_call_details.method.startswith(self._prefix):
            return handler
        method = handler_call_details.method[len(self._prefix) :]
        try:
            who = await self.authenticate(handler_call_details.invocation_metadata or ())
            authorize(method, who, self._roles)
        except AccessRefused as refused:
            self._refusals.record(method, refused)
            return _refusing(handler, refused.code, refused.message)
        return _binding(handler, who)

    async def authenticate(self, metadata: Any) -> Caller:
        """The caller the invocation metadata proves; AccessRefused (UNAUTHENTICATED) saying why not."""
        values = [value for key, value in metadata if key.lower() == AUTHORIZATION]
        if not values:
            raise AccessRefused(
                grpc.StatusCode.UNAUTHENTICATED,
                MISSING_TOKEN,
                "missing 'authorization: Bearer <token>' metadata: the admin API needs a credential "
                "(the CLI's --token option or AGENTMESH_TOKEN)",
            )
        value = values[0]
        text = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
        scheme, _, token = text.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != SCHEME or not token:
            raise AccessRefused(
                grpc.StatusCode.UNAUTHENTICATED, MALFORMED_TOKEN, "the authorization metadata must be 'Bearer <token>'"
            )
        if hmac.compare_digest(token.encode(), self._token):
            return BOOTSTRAP_CALLER
        store = self._credentials
        record = await asyncio.to_thread(store.find, token) if store is not None else None
        if store is None or record is None:
            raise AccessRefused(
                grpc.StatusCode.UNAUTHENTICATED,
                UNKNOWN_TOKEN,
                f"invalid token: it is neither the control plane's admin token ({BOOTSTRAP_NAME}) "
                "nor a credential it issued",
            )
        who = record.caller()
        if record.revoked_at is not None:
            raise AccessRefused(
                grpc.StatusCode.UNAUTHENTICATED,
                REVOKED_TOKEN,
                f"credential {record.name!r} (id {record.id}) was revoked at {_moment(record.revoked_at)}",
                who,
            )
        if record.expired(store.now()):
            raise AccessRefused(
                grpc.StatusCode.UNAUTHENTICATED,
                EXPIRED_TOKEN,
                f"credential {record.name!r} (id {record.id}) expired at {_moment(record.expires_at)}",
                who,
            )
        return who


def _moment(moment: datetime | None) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ") if moment is not None else "never"


def _refusing(
    handler: grpc.RpcMethodHandler[Any, Any], code: grpc.StatusCode, message: str
) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler of the same shape as `handler` that ends every call with `code` and `message`."""

    async def refuse(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(code, message)

    return _same_shape(handler, refuse)


def _binding(handler: grpc.RpcMethodHandler[Any, Any], who: Caller) -> grpc.RpcMethodHandler[Any, Any]:
    """`handler` with `who` bound as the caller while its behaviour runs."""
    behavior: Any = handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream
    if inspect.isasyncgenfunction(behavior):

        async def stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            # The call's task has its own context copy: the value cannot leak into other calls.
            _CALLER.set(who)
            async for item in behavior(request, context):
                yield item

        return _same_shape(handler, stream)

    async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        bound = _CALLER.set(who)
        try:
            return await behavior(request, context)
        finally:
            _CALLER.reset(bound)

    return _same_shape(handler, call)


def _same_shape(
    handler: grpc.RpcMethodHandler[Any, Any], behavior: Callable[..., Any]
) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler with `handler`'s shape and codec around another behaviour."""
    codec: dict[str, Any] = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(behavior, **codec)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(behavior, **codec)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(behavior, **codec)
    return grpc.unary_unary_rpc_method_handler(behavior, **codec)
