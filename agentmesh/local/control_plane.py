"""The control plane `agentmesh up` runs in its own process, and the mesh file's policies.

The same `ControlPlane` as `agentmesh control-plane` (SQLite policy store,
registry, xDS, admin API), started in up's event loop with this run's admin
token. The mesh file's policies go through the same validation as
`agentmesh policy apply` (every document, as a set with the stored ones,
against the registered agents) and into the same store, so they get a
policy version, history and a push to every sidecar.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from agentmesh.config import ConfigError, ConfigIssue
from control_plane.app import ControlPlane, ControlPlaneSettings
from control_plane.policy.store import ChangeResult, PolicyStoreError
from control_plane.policy.validate import load_documents, validate_documents, validate_paths
from control_plane.registry.view import mesh_view


@dataclass(frozen=True)
class PolicyOutcome:
    """What applying the mesh file's policies did."""

    result: ChangeResult
    warnings: tuple[ConfigIssue, ...]
    documents: int


def check_policies(paths: Sequence[Path]) -> None:
    """Checks policy files without a control plane (parsing, each document, the set); raises ConfigError."""
    if not paths:
        return
    documents = load_documents(paths)
    validate_documents(documents).raise_for_errors()


def author() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "agentmesh-up"


class EmbeddedControlPlane:
    """A `ControlPlane` in this process, with helpers `agentmesh up` needs."""

    def __init__(self, *, listen: str, http: str, db: Path, token: str) -> None:
        self.control_plane = ControlPlane(ControlPlaneSettings(listen=listen, http=http, db=str(db), token=token))
        self.grpc_port = 0
        self.http_port = 0
        self._started = False

    def address(self, listen: str) -> str:
        """host:port of a listen address with the port actually bound (a port 0 is resolved)."""
        host, _, port = listen.rpartition(":")
        return f"{host}:{self.grpc_port if port == '0' else port}"

    async def start(self) -> None:
        """Starts serving; raises OSError when a port is taken (nothing is left running then)."""
        try:
            ports = await self.control_plane.start()
        except (OSError, RuntimeError) as exc:
            # grpcio reports a taken port as RuntimeError, aiohttp as OSError.
            with contextlib.suppress(Exception):
                await self.control_plane.stop()
            raise OSError(str(exc)) from exc
        self.grpc_port, self.http_port = ports.grpc, ports.http
        self._started = True

    async def stop(self) -> None:
        if self._started:
            self._started = False
            await self.control_plane.stop()

    def registered(self, agent: str, address: str) -> bool:
        """Whether the sidecar advertising `address` is registered for `agent`."""
        return any(instance.address == address for instance in self.control_plane.registry.instances(agent))

    def policy_version(self) -> int:
        return self.control_plane.store.current_version()

    async def apply(self, paths: Sequence[Path], *, message: str) -> PolicyOutcome:
        """Validates the files against the stored policy and the registry, then stores them as one version.

        Raises ConfigError listing every error (nothing is stored then).
        """
        return await asyncio.to_thread(self._apply, paths, message)

    def _apply(self, paths: Sequence[Path], message: str) -> PolicyOutcome:
        store = self.control_plane.store
        documents, report = validate_paths(
            paths, registry=mesh_view(self.control_plane.registry), stored=store.current().policies
        )
        report.raise_for_errors()
        try:
            result = store.apply([d.policy for d in documents], author(), message=message)
        except PolicyStoreError as exc:
            raise ConfigError([ConfigIssue(", ".join(str(p) for p in paths), None, "", str(exc))]) from exc
        if result.created:
            self.control_plane.publisher.mark_dirty()
        return PolicyOutcome(result, report.warnings, len(documents))
