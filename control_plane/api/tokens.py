"""The admin API's identity calls: join tokens (create, list, revoke) and the certificate authority's public side.

`AdminService` (control_plane/api/admin.py) delegates CreateJoinToken,
ListJoinTokens, RevokeJoinToken and GetCertificateAuthority here; the role
each needs is in control_plane/api/auth.py (admin for tokens, viewer for the
CA). Refusals raise `AdminError`, which the admin API's one boundary turns into
a status: INVALID_ARGUMENT naming the field (bad agent or team name, a team
that cannot be found, a non-positive ttl), NOT_FOUND for an unknown token id.

A token's team is the request's, else the team the agent registered with; the
token's secret is in CreateJoinToken's answer only. `created_by` is the name
of the credential that made the call.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from typing import Any

import grpc
from google.protobuf import duration_pb2

from agentmesh.identity.spiffe import check_name
from agentmesh.v1 import control_pb2
from control_plane.api.admin import AdminError
from control_plane.api.auth import NoCallerError, caller
from control_plane.api.identity import timestamp
from control_plane.identity.ca import CertificateAuthority
from control_plane.identity.join_tokens import (
    DEFAULT_MAX_USES,
    DEFAULT_TTL,
    JoinToken,
    JoinTokenNotFound,
    JoinTokenStore,
)
from control_plane.identity.ledger import IssuanceLedger
from control_plane.registry import Registry

log = logging.getLogger(__name__)

# Recorded as `created_by` when the call carries no authenticated caller (a server without the token interceptor).
UNKNOWN_CREATOR = "admin"

Context = grpc.aio.ServicerContext[Any, Any]


def _author(context: Context) -> str:
    try:
        return caller(context).name
    except NoCallerError:
        return UNKNOWN_CREATOR


def token_message(token: JoinToken, trust_domain: str, secret: str = "") -> control_pb2.JoinToken:
    return control_pb2.JoinToken(
        id=token.id,
        agent=token.agent,
        team=token.team,
        spiffe_id=token.spiffe_id(trust_domain).uri,
        created=timestamp(token.created_at),
        expires=timestamp(token.expires_at),
        max_uses=token.max_uses,
        uses=token.uses,
        revoked=token.revoked_at is not None,
        created_by=token.created_by,
        description=token.description,
        secret=secret,
    )


class JoinTokenAdmin:
    """Join tokens and the CA, as the admin API serves them; the registry is read on the event loop's thread."""

    def __init__(
        self, *, tokens: JoinTokenStore, ca: CertificateAuthority, ledger: IssuanceLedger, registry: Registry
    ) -> None:
        self._tokens = tokens
        self._ca = ca
        self._ledger = ledger
        self._registry = registry

    def __repr__(self) -> str:
        return f"JoinTokenAdmin(tokens={self._tokens!r}, ca={self._ca!r})"

    async def create(self, request: control_pb2.CreateJoinTokenRequest, context: Context) -> control_pb2.JoinToken:
        agent = request.agent.strip()
        if not agent:
            raise AdminError(grpc.StatusCode.INVALID_ARGUMENT, "agent: name the agent the token lets a sidecar join as")
        _check(agent, "agent")
        team = request.team.strip() or self._registered_team(agent)
        _check(team, "team")
        ttl = request.ttl.ToTimedelta() if request.HasField("ttl") else DEFAULT_TTL
        if ttl <= timedelta(0):
            raise AdminError(grpc.StatusCode.INVALID_ARGUMENT, "ttl: must be positive, e.g. 1h")
        created_by = _author(context)
        created = await asyncio.to_thread(
            self._tokens.create,
            agent=agent,
            team=team,
            created_by=created_by,
            ttl=ttl,
            max_uses=request.max_uses or DEFAULT_MAX_USES,
            description=request.description,
        )
        token = created.token
        log.info(
            "join token created",
            extra={
                "token_id": token.id,
                "spiffe_id": token.spiffe_id(self._ca.trust_domain).uri,
                "expires": token.expires_at.isoformat(),
                "max_uses": token.max_uses,
                "created_by": created_by,
            },
        )
        return token_message(token, self._ca.trust_domain, created.secret)

    def _registered_team(self, agent: str) -> str:
        teams = sorted({instance.team for instance in self._registry.instances(agent=agent) if instance.team})
        if len(teams) == 1:
            return teams[0]
        if teams:
            raise AdminError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"team: agent {agent!r} is registered with teams {', '.join(teams)}; name one with --team",
            )
        raise AdminError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"team: agent {agent!r} is not registered with a team, so its team is unknown; name it with --team",
        )

    async def list_tokens(
        self, request: control_pb2.ListJoinTokensRequest, context: Context
    ) -> control_pb2.ListJoinTokensResponse:
        tokens = await asyncio.to_thread(self._tokens.list_tokens, include_inactive=request.all)
        return control_pb2.ListJoinTokensResponse(
            tokens=[token_message(token, self._ca.trust_domain) for token in tokens]
        )

    async def revoke(self, request: control_pb2.RevokeJoinTokenRequest, context: Context) -> control_pb2.JoinToken:
        if not request.id:
            raise AdminError(grpc.StatusCode.INVALID_ARGUMENT, "id: name the join token to revoke")
        try:
            token = await asyncio.to_thread(self._tokens.revoke, request.id)
        except JoinTokenNotFound:
            raise AdminError(grpc.StatusCode.NOT_FOUND, f"no join token with id {request.id!r}") from None
        log.info(
            "join token revoked",
            extra={
                "token_id": token.id,
                "spiffe_id": token.spiffe_id(self._ca.trust_domain).uri,
                "by": _author(context),
            },
        )
        return token_message(token, self._ca.trust_domain)

    async def certificate_authority(
        self, request: control_pb2.GetCertificateAuthorityRequest, context: Context
    ) -> control_pb2.CertificateAuthority:
        issued = await asyncio.to_thread(self._ledger.issued)
        ttl = duration_pb2.Duration()
        ttl.FromTimedelta(self._ca.workload_ttl)
        return control_pb2.CertificateAuthority(
            trust_domain=self._ca.trust_domain,
            trust_bundle_pem=self._ca.trust_bundle_pem,
            issuer_pem=self._ca.issuer_pem,
            issuer_not_after=timestamp(self._ca.issuer_not_after),
            workload_ttl=ttl,
            issued=issued,
        )


def _check(name: str, what: str) -> None:
    try:
        check_name(name, what)
    except ValueError as exc:
        raise AdminError(grpc.StatusCode.INVALID_ARGUMENT, f"{what}: {exc}") from None
