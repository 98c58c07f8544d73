"""Wiring only: builds the sidecar's parts from agent.yaml and runs them.

Start-up order: contract → upstream adapter → identity (when mTLS is on) →
inbound chain and listener → health prober → egress listeners → admin →
certificate rotation, registration (with mTLS, once the first certificate is
held) and xDS. Shutdown (SIGTERM/SIGINT) drains: readiness and grpc.health go
NOT_SERVING, new calls get UNAVAILABLE, in-flight calls get
`limits.drain_timeout` to finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import tempfile
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import descriptor_pb2, json_format

from agentmesh.protoc import ProtoCompileError, compile_descriptor_set
from agentmesh.telemetry.tracing import configure_tracing, shutdown_tracing
from agentmesh.v1 import manifest_pb2
from sidecar.admin.server import AdminServer
from sidecar.config.bootstrap import Bootstrap
from sidecar.config.registration import Registrar
from sidecar.config.snapshot import EMPTY_SNAPSHOT, MeshSnapshot
from sidecar.contract import ContractSet, MessageChecker
from sidecar.contract.compiled import normalize_method
from sidecar.contract.manifest import build_manifest
from sidecar.filters.rbac import RbacFilter
from sidecar.health import HealthProber
from sidecar.identity import IdentityPlan, SidecarIdentity, open_identity_source, plan_identity
from sidecar.inbound.agent_service import AgentService
from sidecar.inbound.chain import CONFIG_HEADER_PREFIX, Admission, InboundChain
from sidecar.inbound.server import InboundServer, channel_options, server_options
from sidecar.outbound.egress import Egress
from sidecar.outbound.endpoints import ClusterStates
from sidecar.outbound.forward import Forwarder
from sidecar.outbound.listener_grpc import EgressGrpcHandler
from sidecar.outbound.listener_http import EgressHttpListener
from sidecar.outbound.targets import TargetDirectory
from sidecar.stats import SidecarStats
from sidecar.upstream.base import adapter_for
from sidecar.upstream.http_json import HttpJsonAdapter

if TYPE_CHECKING:
    from agentmesh.identity.rotation import Rotator
    from sidecar.config.ads_client import AdsClient

log = logging.getLogger("agentmesh.sidecar")

OUTLIER_SWEEP_INTERVAL = 1.0


class StartupError(Exception):
    """The sidecar cannot start; the message says what to fix."""


def load_contract(bootstrap: Bootstrap) -> ContractSet:
    """Compiles the agent's .proto files (or reads its descriptor set) into a ContractSet."""
    contract = bootstrap.contract
    try:
        if contract.descriptor_set is not None:
            fds = descriptor_pb2.FileDescriptorSet.FromString(contract.descriptor_set.read_bytes())
        else:
            # In a child process: protoc would otherwise stay mapped in the sidecar (about 8 MB resident).
            fds = compile_descriptor_set(contract.protos, includes=contract.include, isolated=True)
        overrides = {
            normalize_method(name): skill.model_dump(exclude_none=True) for name, skill in contract.skills.items()
        }
        return ContractSet.compile(fds, services=contract.services, overrides=overrides)
    except ProtoCompileError as exc:
        raise StartupError(f"contract.protos: {exc}") from exc
    except ValueError as exc:
        raise StartupError(f"contract: {exc}") from exc


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def _default_config_cache(agent: str, address: str) -> Path:
    """Where the last good xDS config is kept when agent.yaml names no place."""
    return Path(tempfile.gettempdir()) / f"agentmesh-xds-{agent}-{address.replace(':', '_')}.json"


def _advertised(listen: str, port: int) -> str:
    """The address others reach a listener at: its host (loopback for a wildcard) and the bound port."""
    host, _ = _split(listen)
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class Ports:
    inbound: int
    egress_grpc: int
    egress_http: int
    admin: int


class Sidecar:
    """One sidecar process: inbound, egress, admin and the health prober."""

    def __init__(self, bootstrap: Bootstrap, *, config_path: Path | None = None) -> None:
        self.bootstrap = bootstrap
        self._config_path = config_path
        agent = bootstrap.agent
        self.contract = load_contract(bootstrap)
        self.stats = SidecarStats(agent=agent.name, version=agent.version, team=agent.team)
        self.admission = Admission()
        self.manifest: manifest_pb2.Manifest = build_manifest(self.contract, agent, slo=bootstrap.slo)
        self.stats.set_slo_target(bootstrap.slo.availability)
        checker = MessageChecker()
        self._upstream = adapter_for(bootstrap.upstream, max_message_bytes=bootstrap.limits.max_message_bytes)
        if isinstance(self._upstream, HttpJsonAdapter):
            try:
                self._upstream.prepare(self.contract.methods.values())
            except ValueError as exc:
                raise StartupError(f"contract: google.api.http binding unusable: {exc}") from exc
        # The xDS config in force: swapped whole by `_apply_snapshot`, read once per call.
        self.mesh: MeshSnapshot = EMPTY_SNAPSHOT
        self._access: RbacFilter | None = None
        self._config_headers: dict[str, str] = {}
        self.clusters = ClusterStates()
        chain = InboundChain(
            bootstrap=bootstrap,
            contract=self.contract,
            checker=checker,
            upstream=self._upstream,
            stats=self.stats,
            admission=self.admission,
            access=lambda: self._access,
            runtime_headers=lambda: self._config_headers,
        )
        self.inbound = InboundServer(
            contract=self.contract,
            chain=chain,
            agent_service=AgentService(contract=self.contract, chain=chain, manifest=lambda: self.manifest),
            limits=bootstrap.limits,
        )
        self._prober = HealthProber(bootstrap.health, bootstrap.upstream, on_change=self._agent_health_changed)
        self.identity_plan: IdentityPlan = plan_identity(bootstrap)
        self.identity: SidecarIdentity | None = None
        self._rotator: Rotator | None = None
        if self.identity_plan.enabled:
            self._rotator = open_identity_source(self.identity_plan, bootstrap, registry=self.stats.registry)
            self.identity = SidecarIdentity(
                self._rotator, mode=self.identity_plan.mode, agent=agent, directory=self.identity_plan.dir
            )
            # Callers' certificates must name this mesh's trust domain (sidecar/filters/authn.py).
            self.identity.on_change(lambda material: chain.peers.set_trust_domain(material.spiffe_id.trust_domain))
            if self.identity.material is not None:
                chain.peers.set_trust_domain(self.identity.material.spiffe_id.trust_domain)
            # Access rules act on certificates now: a call must not pass before the rules are known.
            self.admission.config_pending = "no configuration from the control plane yet (access policy unknown)"
        self.targets = TargetDirectory(
            bootstrap.targets, channel_options=channel_options(bootstrap.limits), identity=self.identity
        )
        egress = Egress(
            directory=self.targets,
            forwarder=Forwarder(self.targets, agent=agent.name, team=agent.team, version=agent.version),
            clusters=self.clusters,
            mesh=lambda: self.mesh,
            stats=self.stats,
            agent=agent.name,
        )
        self._egress_grpc = grpc.aio.server(options=server_options(bootstrap.limits))
        self._egress_grpc.add_generic_rpc_handlers((EgressGrpcHandler(egress),))
        self._egress_http = EgressHttpListener(
            egress=egress,
            checker=checker,
            stats=self.stats,
            default_timeout=bootstrap.upstream.timeout,
            max_body_bytes=bootstrap.limits.max_message_bytes,
        )
        admin_host, admin_port = _split(bootstrap.listen.admin)
        self._admin = AdminServer(
            host=admin_host,
            port=admin_port,
            stats=self.stats,
            manifest=lambda: self.manifest,
            card_url=f"grpc://{bootstrap.listen.inbound}",
            config_dump=self.config_dump,
            readiness=self.readiness,
            runtime_config=self.runtime_config,
            identity=self.describe_identity,
        )
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Future[None]] = set()
        self.registrar: Registrar | None = None
        self.xds: AdsClient | None = None

    def _apply_snapshot(self, snapshot: MeshSnapshot) -> None:
        """Publishes a new xDS config: cluster state first, then one reference swap per part."""
        self.clusters.sync(snapshot)
        self.targets.expect(snapshot)
        inbound = snapshot.inbound
        self._access = RbacFilter.build(inbound.rbac) if inbound is not None else None
        self._config_headers = dict(inbound.request_headers) if inbound is not None else {}
        self.mesh = snapshot
        self.admission.config_pending = None
        # Learn new endpoints' contracts now, not on the first call that picks them.
        addresses = {e.address for assignment in snapshot.endpoints.values() for e in assignment.endpoints}
        self._in_background(self.targets.prefetch(addresses))

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        """Runs short work off the caller's path, keeping a reference until it ends."""
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def runtime_config(self) -> dict[str, str]:
        """AgentConfig values in force (header names without the x-agentmesh-config- prefix)."""
        return {k.removeprefix(CONFIG_HEADER_PREFIX): v for k, v in sorted(self._config_headers.items())}

    async def _sweep_outliers(self) -> None:
        while True:
            await asyncio.sleep(OUTLIER_SWEEP_INTERVAL)
            self.clusters.sweep()

    def readiness(self) -> tuple[bool, str]:
        if self.admission.draining:
            return False, "draining"
        if self.admission.config_pending is not None:
            return False, self.admission.config_pending
        if not self.admission.agent_healthy:
            return False, f"agent not healthy: {self.admission.reason}"
        if self.identity is not None:
            if not self.identity.ready.is_set():
                return False, f"no certificate yet: {self.identity.waiting_reason}"
            expired = self.identity.expired()
            if expired is not None:
                return False, expired
        return True, "ready"

    def describe_identity(self) -> dict[str, object]:
        """For /identity: mTLS on (mode, SPIFFE ID, serial, validity, generation) or off and why."""
        if self.identity is None:
            return {"mtls": False, "reason": self.identity_plan.reason}
        return self.identity.describe()

    def config_dump(self) -> dict[str, Any]:
        bootstrap = self.bootstrap.model_dump(mode="json")
        if bootstrap["identity"].get("join_token"):
            bootstrap["identity"]["join_token"] = "<redacted>"
        return {
            "bootstrap": bootstrap,
            "identity": self.describe_identity(),
            "source": str(self._config_path) if self._config_path else None,
            "contract": {
                "services": list(self.contract.services),
                "methods": {
                    path: {
                        "input": m.input.full_name,
                        "output": m.output.full_name,
                        "server_streaming": m.server_streaming,
                        "idempotent": m.skill.idempotent,
                        "timeout_s": m.skill.timeout,
                        "http_rule": None if m.http_rule is None else vars(m.http_rule),
                    }
                    for path, m in self.contract.methods.items()
                },
            },
            "targets": self.targets.describe(),
            "xds": self.xds.describe() if self.xds is not None else None,
            "clusters": {state.name: state.describe() for state in self.clusters},
            "runtime_config": self.runtime_config(),
            "admission": {"agent_healthy": self.admission.agent_healthy, "draining": self.admission.draining},
            "manifest": json_format.MessageToDict(self.manifest, preserving_proto_field_name=True)
            | {"descriptors": f"{len(self.manifest.descriptors.file)} files"},
        }

    def _agent_health_changed(self, healthy: bool) -> None:
        self.admission.agent_healthy = healthy
        self.admission.reason = "ok" if healthy else (self._prober.last_error or "probe failing")
        self.stats.set_upstream_healthy(healthy)
        if not self.admission.draining:
            self._in_background(self.inbound.set_serving(healthy))
        if self.registrar is not None:
            self.registrar.health_changed()

    async def start(self) -> Ports:
        listen = self.bootstrap.listen
        log.info(self.identity_plan.reason)
        await self.inbound.set_serving(False)
        inbound = await self.inbound.start(listen.inbound, identity=self.identity, stats=self.stats)
        egress_grpc = self._egress_grpc.add_insecure_port(listen.egress_grpc)
        if egress_grpc == 0:
            raise OSError(f"cannot listen on {listen.egress_grpc}")
        await self._egress_grpc.start()
        egress_http = await self._egress_http.start(*_split(listen.egress_http))
        admin = await self._admin.start()
        self._tasks.append(asyncio.ensure_future(self._prober.run()))
        ports = Ports(inbound, egress_grpc, egress_http, admin)
        link = self.bootstrap.control_plane
        if link is not None:
            identity = self.identity
            target = link.target()
            tls = target.tls
            log.info("control plane link: %s", target)
            self.registrar = Registrar(
                control_plane=link.address,
                tls=tls,
                manifest=self.manifest,
                address=link.advertise_address or _advertised(listen.inbound, inbound),
                admin_address=_advertised(listen.admin, admin),
                zone=link.zone,
                healthy=lambda: self.admission.agent_healthy and not self.admission.draining,
                identity=(lambda: identity.material) if identity is not None else (lambda: None),
            )
            if self._rotator is not None:
                self._tasks.append(asyncio.ensure_future(self._rotator.run()))
            self._tasks.append(asyncio.ensure_future(self._register()))
            advertised = link.advertise_address or _advertised(listen.inbound, inbound)
            # Imported here: the xDS protos (about 9 MB resident) are loaded only by sidecars with a control plane.
            from sidecar.config.ads_client import AdsClient, NodeIdentity

            self.xds = AdsClient(
                target=link.address,
                tls=tls,
                node=NodeIdentity(
                    agent=self.bootstrap.agent.name,
                    address=advertised,
                    version=self.bootstrap.agent.version,
                    team=self.bootstrap.agent.team,
                    zone=link.zone,
                ),
                stats=self.stats,
                persist_path=link.config_cache or _default_config_cache(self.bootstrap.agent.name, advertised),
                on_snapshot=self._apply_snapshot,
            )
            self._tasks.append(asyncio.ensure_future(self.xds.run()))
            self._tasks.append(asyncio.ensure_future(self._sweep_outliers()))
        log.info(
            "sidecar ready",
            extra={
                "ports": vars(ports),
                "services": list(self.contract.services),
                "upstream": self.bootstrap.upstream.url,
            },
        )
        return ports

    async def _register(self) -> None:
        """Registers with the control plane; with mTLS, once the first certificate is held (the first
        report says the instance accepts mTLS, so callers never dial it in plaintext)."""
        assert self.registrar is not None
        if self.identity is not None and not self.identity.ready.is_set():
            log.info("registering with the control plane once the first certificate arrives")
            await self.identity.ready.wait()
        await self.registrar.run()

    async def stop(self) -> None:
        """Drains in-flight calls, then closes everything."""
        self.admission.draining = True
        self.admission.reason = "draining"
        if self.registrar is not None:
            self.registrar.health_changed()  # the control plane stops routing here first
        with contextlib.suppress(Exception):
            await self.inbound.set_serving(False)
        grace = self.bootstrap.limits.drain_timeout
        log.info("draining", extra={"grace_s": grace})
        await asyncio.gather(self.inbound.stop(grace), self._egress_grpc.stop(grace), self._egress_http.stop())
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(self._admin.stop(), self._upstream.aclose(), self.targets.close())
        if self.identity is not None:
            self.identity.close()
        shutdown_tracing()
        log.info("sidecar stopped")


async def run(bootstrap: Bootstrap, *, config_path: Path | None = None) -> None:
    """Runs a sidecar until SIGTERM or SIGINT, then drains and stops."""
    agent = bootstrap.agent
    configure_tracing(
        "agentmesh-sidecar",
        attributes={"agentmesh.agent": agent.name, "agentmesh.version": agent.version, "agentmesh.team": agent.team},
    )
    sidecar = Sidecar(bootstrap, config_path=config_path)
    await sidecar.start()
    # Everything allocated so far lives as long as the process: keep the collector from rescanning it.
    gc.freeze()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await sidecar.stop()
