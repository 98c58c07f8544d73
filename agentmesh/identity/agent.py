"""Wiring only: the `agentmesh identity-agent` process, certificates for workloads that are not our sidecars.

One Rotator (agentmesh/identity/rotation.py) enrolls with a join token,
persists `key.pem`, `cert-chain.pem` and `root-cert.pem` in the directory
(what proxyless gRPC's `file_watcher` certificate provider reads) and renews
them; an SDS server (sds.py) hands the same material to Envoy and pushes each
rotation. Optionally it writes the gRPC xDS bootstrap of a proxyless client
(delivery.grpc_xds_bootstrap) pointing at those files. The SDS port also
serves grpc.health.v1 (SERVING once the first certificate is in hand).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]
from prometheus_client import CollectorRegistry, start_http_server

from agentmesh.identity.control_plane_tls import ControlPlaneTarget, ControlPlaneTls, explain_connection_failure
from agentmesh.identity.delivery import UNIX_PREFIX, check_sds_address, grpc_xds_bootstrap
from agentmesh.identity.files import CHAIN_FILE, KEY_FILE, ROOTS_FILE
from agentmesh.identity.material import IdentityMaterial
from agentmesh.identity.rotation import Rotator
from agentmesh.identity.sds import SdsServer

log = logging.getLogger("agentmesh.identity.agent")

SDS_SOCKET = "sds.sock"
DEFAULT_REFRESH_INTERVAL = 10.0
STOP_GRACE = 2.0


class IdentityAgentError(Exception):
    """The identity agent cannot start: the message names the option or file and the reason."""


@dataclass(frozen=True)
class IdentityAgentSettings:
    control_plane: str
    directory: Path
    join_token: str | None = None
    # `unix:<path>` or a loopback host:port; "" serves no SDS (files only).
    sds_listen: str = ""
    # Where to write a proxyless gRPC client's xDS bootstrap; None writes none.
    grpc_bootstrap: Path | None = None
    # The bootstrap's node id; default `proxyless~<agent>`.
    node_id: str = ""
    refresh_interval: float = DEFAULT_REFRESH_INTERVAL
    # host:port for Prometheus metrics; "" for none.
    metrics_listen: str = ""
    # TLS to the control plane's secure port (--ca-file, --server-name); None: plaintext.
    control_plane_tls: ControlPlaneTls | None = None

    def default_sds_listen(self) -> str:
        return f"{UNIX_PREFIX}{self.directory.resolve() / SDS_SOCKET}"


class IdentityAgent:
    """The running identity agent; `start()`, then `stop()`."""

    def __init__(self, settings: IdentityAgentSettings) -> None:
        if settings.sds_listen:
            try:
                check_sds_address(settings.sds_listen)
            except ValueError as exc:
                raise IdentityAgentError(f"--sds-listen: {exc}") from None
        self.settings = settings
        self.metrics = CollectorRegistry()
        self.rotator = Rotator(
            ControlPlaneTarget(settings.control_plane, settings.control_plane_tls),
            join_token=settings.join_token,
            directory=settings.directory,
            registry=self.metrics,
        )
        self._server: grpc.aio.Server | None = None
        self._sds: SdsServer | None = None
        self._health = health_aio.HealthServicer()
        self._unsubscribe = self.rotator.subscribe(self._rotated)

    async def start(self) -> IdentityMaterial:
        """Gets the first certificate, writes the bootstrap, starts serving SDS; raises IdentityAgentError."""
        from agentmesh.identity.client import IdentityError

        settings = self.settings
        if settings.metrics_listen:
            host, _, port = settings.metrics_listen.rpartition(":")
            try:
                start_http_server(int(port), host or "127.0.0.1", registry=self.metrics)
            except (OSError, ValueError) as exc:
                raise IdentityAgentError(f"--metrics-listen {settings.metrics_listen}: {exc}") from None
        try:
            material = await self.rotator.start()
        except IdentityError as exc:
            target = ControlPlaneTarget(settings.control_plane, settings.control_plane_tls)
            explained = explain_connection_failure(exc.reason, settings.control_plane_tls)
            hint = f" ({explained})" if explained is not None else ""
            raise IdentityAgentError(f"cannot get a certificate from {target}: {exc}{hint}") from None
        if settings.grpc_bootstrap is not None:
            self._write_bootstrap(material)
        if settings.sds_listen:
            await self._serve_sds(settings.sds_listen)
        await self._health.set("", health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "identity agent ready",
            extra={
                "spiffe_id": material.spiffe_id.uri,
                "not_after": material.not_after.isoformat(),
                "directory": str(settings.directory),
                "sds": settings.sds_listen,
                "grpc_bootstrap": str(settings.grpc_bootstrap or ""),
            },
        )
        return material

    async def _serve_sds(self, address: str) -> None:
        socket = _socket_path(address)
        if socket is not None:
            socket.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            socket.unlink(missing_ok=True)
        self._sds = SdsServer(self.rotator, registry=self.metrics)
        server = grpc.aio.server()
        self._sds.add_to_server(server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        if server.add_insecure_port(address) == 0:
            raise IdentityAgentError(f"--sds-listen {address}: cannot listen there")
        await server.start()
        if socket is not None:
            # The private key crosses this socket: its owner only.
            os.chmod(socket, 0o600)
        self._server = server

    def _write_bootstrap(self, material: IdentityMaterial) -> None:
        settings = self.settings
        assert settings.grpc_bootstrap is not None
        directory = settings.directory.resolve()
        try:
            bootstrap = grpc_xds_bootstrap(
                control_plane=settings.control_plane,
                node_id=settings.node_id or f"proxyless~{material.spiffe_id.agent}",
                certificate_file=directory / CHAIN_FILE,
                private_key_file=directory / KEY_FILE,
                ca_certificate_file=directory / ROOTS_FILE,
                refresh_interval=settings.refresh_interval,
                control_plane_ca_file=self._bootstrap_ca_file(),
            )
        except ValueError as exc:
            raise IdentityAgentError(f"--node-id: {exc}") from None
        path = settings.grpc_bootstrap
        temporary = path.with_name(f".{path.name}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary.write_text(json.dumps(bootstrap, indent=2) + "\n")
            temporary.replace(path)
        except OSError as exc:
            raise IdentityAgentError(f"--grpc-bootstrap {path}: cannot write it: {exc.strerror or exc}") from None

    def _bootstrap_ca_file(self) -> Path | None:
        """The trust bundle the proxyless client verifies the control plane with (None: plaintext, as we dial it)."""
        tls = self.settings.control_plane_tls
        if tls is None or tls.ca_file is None:
            return None
        host = self.settings.control_plane.rpartition(":")[0].removeprefix("[").removesuffix("]")
        if host != tls.server_name:
            log.warning(
                "the gRPC bootstrap's xDS client checks the control plane's certificate against %s (the host of "
                "--control-plane: the bootstrap has no server-name setting), not %s; the control plane must list "
                "%s in --secure-san",
                host,
                tls.server_name,
                host,
            )
        return tls.ca_file.resolve()

    def _rotated(self, material: IdentityMaterial) -> None:
        log.info(
            "certificate rotated",
            extra={
                "spiffe_id": material.spiffe_id.uri,
                "generation": material.generation,
                "not_after": material.not_after.isoformat(),
            },
        )

    async def stop(self) -> None:
        """Stops serving (streams end; Envoy keeps the secrets it has) and stops renewing."""
        self._unsubscribe()
        await self._health.enter_graceful_shutdown()
        if self._sds is not None:
            self._sds.close()
        if self._server is not None:
            await self._server.stop(STOP_GRACE)
        await self.rotator.stop()
        socket = _socket_path(self.settings.sds_listen)
        if socket is not None:
            socket.unlink(missing_ok=True)
        log.info("identity agent stopped")


def _socket_path(address: str) -> Path | None:
    return Path(address[len(UNIX_PREFIX) :]) if address.startswith(UNIX_PREFIX) else None


async def run(settings: IdentityAgentSettings) -> None:
    """Runs the identity agent until SIGTERM or SIGINT; raises IdentityAgentError when it cannot start."""
    agent = IdentityAgent(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    starting = asyncio.ensure_future(agent.start())
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if not starting.done():
        starting.cancel()
        await asyncio.gather(starting, return_exceptions=True)
        await agent.stop()
        return
    error = starting.exception()
    if error is not None:
        stopping.cancel()
        await agent.stop()
        raise error
    await stopping
    await agent.stop()
