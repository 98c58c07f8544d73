"""Wiring only: the control plane process.

One gRPC port serves ADS (xDS v3), sidecar registration, identity and the
admin API (token-protected); with `secure_listen` the same server also
listens there with TLS (control_plane/identity/server_tls.py). One HTTP port
serves probes, metrics and Prometheus service discovery. Policy lives in SQLite (versioned); the registry lives in
memory and is rebuilt from sidecar registrations, which reconnect on their
own after a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry

from agentmesh.identity.spiffe import DEFAULT_TRUST_DOMAIN
from agentmesh.v1 import control_pb2, control_pb2_grpc
from control_plane.access.credentials import CredentialStore
from control_plane.api.admin import AdminService
from control_plane.api.auth import AdminRefusals, TokenAuthInterceptor
from control_plane.api.identity import IdentityService
from control_plane.api.registration import RegistrationService
from control_plane.api.tokens import JoinTokenAdmin
from control_plane.http import ControlPlaneHttp
from control_plane.identity.ca import DEFAULT_WORKLOAD_TTL, CertificateAuthority
from control_plane.identity.join_tokens import JoinTokenStore
from control_plane.identity.ledger import IssuanceLedger
from control_plane.identity.server_tls import DEFAULT_SERVER_CERT_TTL, ServerTls
from control_plane.policy.store import PolicyStore
from control_plane.publisher import SnapshotPublisher
from control_plane.registry import Registry
from control_plane.registry.journal import RegistryJournal
from control_plane.translate import DEFAULT_GATEWAY_PORT
from control_plane.xds.ack_tracker import AckTracker
from control_plane.xds.ads_server import AggregatedDiscoveryService
from control_plane.xds.cache import SnapshotCache

log = logging.getLogger("agentmesh.control_plane")

DEFAULT_LISTEN = "127.0.0.1:15010"
DEFAULT_HTTP = "127.0.0.1:18080"
DEFAULT_DB = ".agentmesh/control-plane.db"
DEFAULT_REGISTRY_TTL = 15.0
DEFAULT_HEARTBEAT = 5.0
_GRPC_OPTIONS = [("grpc.max_receive_message_length", 64 * 1024 * 1024), ("grpc.so_reuseport", 0)]


@dataclass(frozen=True)
class ControlPlaneSettings:
    listen: str = DEFAULT_LISTEN
    http: str = DEFAULT_HTTP
    db: str = DEFAULT_DB
    token: str = ""
    registry_ttl: float = DEFAULT_REGISTRY_TTL
    heartbeat_interval: float = DEFAULT_HEARTBEAT
    # The port of the listener Envoy gateways (node ids `gateway~<name>`) are given.
    gateway_port: int = DEFAULT_GATEWAY_PORT
    # The gateway listener requires client certificates of the trust domain (docs/gateway.md).
    gateway_mtls: bool = False
    # Workload identity (docs/identity.md): the CA's trust domain, its directory (default: `<db>.ca` beside the
    # database), an optional user root it makes its intermediate under, and the workload certificates' lifetime.
    trust_domain: str = DEFAULT_TRUST_DOMAIN
    ca_dir: str = ""
    ca_cert: str = ""
    ca_key: str = ""
    workload_cert_ttl: float = DEFAULT_WORKLOAD_TTL.total_seconds()
    # The secure port (docs/identity.md, "Securing the control-plane link"): "" for none; the extra DNS names and
    # IP addresses of its certificate (besides control-plane.<trust domain>), and the certificate's lifetime.
    secure_listen: str = ""
    secure_sans: tuple[str, ...] = ()
    secure_cert_ttl: float = DEFAULT_SERVER_CERT_TTL.total_seconds()

    def certificate_authority(self) -> CertificateAuthority:
        """Opens (or makes) the CA these settings describe; raises ValueError (CaError) naming the problem."""
        ttl = timedelta(seconds=self.workload_cert_ttl)
        if self.db == ":memory:" and not self.ca_dir and not self.ca_cert:
            return CertificateAuthority.in_memory(trust_domain=self.trust_domain, workload_ttl=ttl)
        return CertificateAuthority.open(
            self.ca_dir or f"{self.db}.ca",
            trust_domain=self.trust_domain,
            workload_ttl=ttl,
            root_cert_file=self.ca_cert or None,
            root_key_file=self.ca_key or None,
        )


@dataclass(frozen=True)
class ControlPlanePorts:
    grpc: int
    http: int
    # The secure (TLS) gRPC port; 0 when there is none.
    secure: int = 0


class ControlPlane:
    def __init__(self, settings: ControlPlaneSettings) -> None:
        if not settings.token:
            raise ValueError("an admin token is required (--token or AGENTMESH_TOKEN)")
        self.settings = settings
        if settings.db != ":memory:":
            Path(settings.db).parent.mkdir(parents=True, exist_ok=True)
        self.metrics = CollectorRegistry()
        self.ca = settings.certificate_authority()
        if settings.secure_listen == settings.listen and not settings.listen.endswith(":0"):
            raise ValueError(f"--secure-listen {settings.secure_listen} is also --listen: give the TLS port its own")
        self.server_tls: ServerTls | None = None
        if settings.secure_listen:
            self.server_tls = ServerTls(
                self.ca,
                extra_names=settings.secure_sans,
                ttl=timedelta(seconds=settings.secure_cert_ttl),
                registry=self.metrics,
            )
        self.store = PolicyStore(settings.db)
        self.credentials = CredentialStore(settings.db)
        self.registry = Registry(ttl=settings.registry_ttl)
        self.journal = RegistryJournal(settings.db)
        restored = self.journal.restore(self.registry)
        if restored:
            log.info(
                "restored %d registered instances; each must re-register within %.0fs", restored, settings.registry_ttl
            )
        self._stop_journal = self.registry.subscribe(lambda _change: self.journal.save(self.registry.instances()))
        self.join_tokens = JoinTokenStore(settings.db)
        self.issuance = IssuanceLedger(settings.db)
        self.cache = SnapshotCache()
        self.tracker = AckTracker()
        self.ads = AggregatedDiscoveryService(self.cache, self.tracker, registry=self.metrics)
        self.publisher = SnapshotPublisher(
            policies=self.store.current,
            registry=self.registry,
            cache=self.cache,
            metrics=self.metrics,
            gateway_port=settings.gateway_port,
            trust_domain=settings.trust_domain,
            gateway_mtls=settings.gateway_mtls,
        )
        self._health = health_aio.HealthServicer()
        refusals = AdminRefusals(self.metrics)
        authentication = TokenAuthInterceptor(settings.token, credentials=self.credentials, refusals=refusals)
        self._server = grpc.aio.server(interceptors=(authentication,), options=_GRPC_OPTIONS)
        self.ads.add_to_server(self._server)
        control_pb2_grpc.add_RegistrationServicer_to_server(
            RegistrationService(self.registry, heartbeat_interval=settings.heartbeat_interval), self._server
        )
        control_pb2_grpc.add_ControlPlaneServicer_to_server(
            AdminService(
                store=self.store,
                registry=self.registry,
                tracker=self.tracker,
                ads=self.ads,
                snapshot_version=lambda: self.publisher.version,
                on_policy_change=self.publisher.mark_dirty,
                credentials=self.credentials,
                refusals=refusals,
                join_tokens=JoinTokenAdmin(
                    tokens=self.join_tokens, ca=self.ca, ledger=self.issuance, registry=self.registry
                ),
            ),
            self._server,
        )
        control_pb2_grpc.add_IdentityServicer_to_server(
            IdentityService(ca=self.ca, tokens=self.join_tokens, ledger=self.issuance, registry=self.metrics),
            self._server,
        )
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        services = [
            "envoy.service.discovery.v3.AggregatedDiscoveryService",
            control_pb2.DESCRIPTOR.services_by_name["Registration"].full_name,
            control_pb2.DESCRIPTOR.services_by_name["ControlPlane"].full_name,
            control_pb2.DESCRIPTOR.services_by_name["Identity"].full_name,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ]
        reflection.enable_server_reflection(services, self._server)
        self._http = ControlPlaneHttp(
            registry=self.registry, metrics=self.metrics, ready=lambda: bool(self.publisher.version)
        )
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> ControlPlanePorts:
        self.publisher.publish_now()
        grpc_port = _bind(lambda: self._server.add_insecure_port(self.settings.listen), self.settings.listen)
        secure_port = 0
        if self.server_tls is not None:
            credentials = self.server_tls.credentials()
            secure_port = _bind(
                lambda: self._server.add_secure_port(self.settings.secure_listen, credentials),
                f"{self.settings.secure_listen} (--secure-listen)",
            )
        await self._server.start()
        host, _, port = self.settings.http.rpartition(":")
        http_port = await self._http.start(host, int(port))
        await self._health.set("", health_pb2.HealthCheckResponse.SERVING)
        self._tasks = [asyncio.ensure_future(self.publisher.run()), asyncio.ensure_future(self._expire_loop())]
        if self.server_tls is not None:
            self._tasks.append(asyncio.ensure_future(self.server_tls.run()))
            self._log_secure_port(secure_port)
        ports = ControlPlanePorts(grpc_port, http_port, secure_port)
        log.info(
            "control plane ready",
            extra={
                "grpc": grpc_port,
                "http": http_port,
                "secure_grpc": secure_port,
                "db": self.settings.db,
                "policy_version": self.store.current_version(),
            },
        )
        return ports

    def _log_secure_port(self, port: int) -> None:
        assert self.server_tls is not None
        host = self.settings.secure_listen.rpartition(":")[0]
        certificate = self.server_tls.current
        log.info(
            "secure port ready: TLS on %s:%d for %s; clients verify it with the trust bundle "
            "(agentmesh ca bundle > ca.pem), then use --ca-file ca.pem (sidecars: control_plane.ca_file)",
            host,
            port,
            ", ".join(certificate.names),
            extra={
                "secure_grpc": port,
                "server_names": list(certificate.names),
                "serial": certificate.serial,
                "not_after": certificate.not_after.isoformat(),
            },
        )

    async def _expire_loop(self) -> None:
        while True:
            await asyncio.sleep(min(self.settings.registry_ttl / 3, 5.0))
            self.registry.expire()

    async def stop(self, grace: float = 5.0) -> None:
        # Sidecar streams closing below are not departures: the journal keeps the mesh as it was.
        self._stop_journal()
        await self._health.enter_graceful_shutdown()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.stop(grace)
        await self._http.stop()
        with contextlib.suppress(Exception):
            self.store.close()
            self.journal.close()
            self.credentials.close()
            self.join_tokens.close()
            self.issuance.close()
        log.info("control plane stopped")


def _bind(add_port: Callable[[], int], where: str) -> int:
    """The port grpc bound; OSError naming `where` when it could not (grpc raises RuntimeError or returns 0)."""
    try:
        port = add_port()
    except RuntimeError:
        port = 0
    if port == 0:
        raise OSError(f"cannot listen on {where}: the address is in use or not local")
    return port


async def run(settings: ControlPlaneSettings) -> None:
    """Runs the control plane until SIGTERM or SIGINT."""
    control_plane = ControlPlane(settings)
    await control_plane.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await control_plane.stop()
