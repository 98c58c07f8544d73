"""Join tokens for the sidecars `agentmesh up` starts, so the local mesh runs with mutual TLS.

Before every start of a sidecar (the first, and each restart after a crash),
up asks the embedded control plane's admin API for a fresh single-use join
token for that agent and team (`CreateJoinToken`, as `agentmesh token
create` would) and hands it to that process only, in its environment
(AGENTMESH_JOIN_TOKEN; readable by the owner alone, never written to disk).
The sidecar enrolls with it, keeps its key and certificate in the replica's
identity folder and renews them itself; a restarted sidecar reuses that
identity, and the token minted for the restart simply expires unused.

Callers from outside the mesh get an identity too: up enrolls the operator's
client identity (`spiffe://<trust-domain>/team/operators/agent/agentmesh-cli`),
keeps it in `.agentmesh/identity/cli/` and renews it while it runs, so
`agentmesh call -f mesh.yaml` reaches strict sidecars over mutual TLS (and
access policies see who called).
"""

from __future__ import annotations

import datetime
import logging
from pathlib import Path
from typing import Final

import grpc
from google.protobuf import duration_pb2

from agentmesh.identity.client import IdentityError
from agentmesh.identity.material import IdentityMaterial
from agentmesh.identity.rotation import Rotator
from agentmesh.v1 import control_pb2, control_pb2_grpc

log = logging.getLogger("agentmesh.local")

# Long enough for a slow start, short enough that a token left in a file is soon worthless.
TOKEN_TTL: Final = datetime.timedelta(minutes=10)
CALL_TIMEOUT: Final = 10.0
# The operator's client identity (agentmesh call).
CLIENT_AGENT: Final = "agentmesh-cli"
CLIENT_TEAM: Final = "operators"
CLIENT_START_TIMEOUT: Final = 15.0


class JoinTokenError(Exception):
    """The control plane would not issue a join token; the message says why."""


class JoinTokens:
    """Mints join tokens through the admin API of the control plane at `address`."""

    def __init__(self, *, address: str, admin_token: str) -> None:
        self._address = address
        self._metadata = (("authorization", f"Bearer {admin_token}"),)
        self.minted = 0

    def __repr__(self) -> str:
        return f"JoinTokens(address={self._address!r}, minted={self.minted})"

    async def create(self, *, agent: str, team: str, description: str) -> str:
        """A fresh single-use token for `agent` of `team`; raises JoinTokenError."""
        ttl = duration_pb2.Duration()
        ttl.FromTimedelta(TOKEN_TTL)
        request = control_pb2.CreateJoinTokenRequest(
            agent=agent, team=team, ttl=ttl, max_uses=1, description=description
        )
        async with grpc.aio.insecure_channel(self._address) as channel:
            stub = control_pb2_grpc.ControlPlaneStub(channel)
            try:
                token = await stub.CreateJoinToken(request, metadata=self._metadata, timeout=CALL_TIMEOUT)
            except grpc.aio.AioRpcError as exc:
                raise JoinTokenError(
                    f"the control plane at {self._address} refused a join token for {agent}: "
                    f"{exc.code().name} {exc.details()}"
                ) from exc
        self.minted += 1
        log.info("join token %s minted for %s (%s)", token.id, token.spiffe_id or agent, description)
        return str(token.secret)


class ClientIdentity:
    """The operator's client identity for this run of up: enrolled at start, renewed until stop."""

    def __init__(self, tokens: JoinTokens, *, address: str, directory: Path) -> None:
        self._tokens = tokens
        self._address = address
        self.directory = directory
        self._rotator: Rotator | None = None

    async def start(self) -> IdentityMaterial:
        """Enrolls (or reuses the unexpired identity in `directory`); raises JoinTokenError or IdentityError."""
        token = await self._tokens.create(
            agent=CLIENT_AGENT, team=CLIENT_TEAM, description="agentmesh up: agentmesh call"
        )
        rotator = Rotator(self._address, join_token=token, directory=self.directory)
        material = await rotator.start(start_timeout=CLIENT_START_TIMEOUT)
        self._rotator = rotator
        return material

    async def stop(self) -> None:
        rotator, self._rotator = self._rotator, None
        if rotator is not None:
            await rotator.stop()


__all__ = ["ClientIdentity", "IdentityError", "JoinTokenError", "JoinTokens"]
