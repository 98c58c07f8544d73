"""The sidecar's registration with the control plane.

One long-lived `Registration.Register` stream: the first report carries the
manifest, the advertised inbound address and whether the inbound listener
speaks mutual TLS (`mtls`, with the certificate's `spiffe_id`; a sidecar with
an identity registers only once it holds a certificate), later reports the
agent's health (at once on a change, otherwise every heartbeat interval the
control plane asks for). A broken stream is reopened with exponential backoff and
jitter; the sidecar keeps serving meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Callable

import grpc

from agentmesh.identity.control_plane_tls import ControlPlaneTls, open_aio_channel
from agentmesh.identity.material import IdentityMaterial
from agentmesh.v1 import control_pb2, control_pb2_grpc, manifest_pb2

log = logging.getLogger("agentmesh.sidecar.registration")

BACKOFF_START = 0.5
BACKOFF_MAX = 30.0
DEFAULT_HEARTBEAT = 5.0


class Registrar:
    def __init__(
        self,
        *,
        control_plane: str,
        manifest: manifest_pb2.Manifest,
        address: str,
        admin_address: str,
        zone: str,
        healthy: Callable[[], bool],
        identity: Callable[[], IdentityMaterial | None] = lambda: None,
        tls: ControlPlaneTls | None = None,
    ) -> None:
        self._target = control_plane
        self._tls = tls
        self._manifest = manifest
        self._address = address
        self._admin_address = admin_address
        self._zone = zone
        self._healthy = healthy
        self._identity = identity
        self._changed = asyncio.Event()
        self.registered = asyncio.Event()
        self.instance_id = ""

    def health_changed(self) -> None:
        """Report now rather than at the next heartbeat."""
        self._changed.set()

    async def run(self) -> None:
        backoff = BACKOFF_START
        async with open_aio_channel(self._target, self._tls) as channel:
            stub = control_pb2_grpc.RegistrationStub(channel)
            while True:
                try:
                    call = stub.Register(self._reports())
                    async for status in call:
                        self.instance_id = status.instance_id
                        self._heartbeat = (status.heartbeat_interval_ms or DEFAULT_HEARTBEAT * 1000) / 1000
                        if not self.registered.is_set():
                            log.info("registered with the control plane at %s as %s", self._target, self.instance_id)
                        self.registered.set()
                        backoff = BACKOFF_START
                    log.warning("control plane closed the registration stream; registering again")
                except grpc.aio.AioRpcError as exc:
                    log.warning(
                        "registration with %s failed: %s %s; retrying in %.1fs",
                        self._target,
                        exc.code().name,
                        exc.details(),
                        backoff,
                    )
                self.registered.clear()
                await asyncio.sleep(backoff * random.uniform(0.8, 1.2))
                backoff = min(backoff * 2, BACKOFF_MAX)

    async def _reports(self) -> AsyncIterator[control_pb2.InstanceReport]:
        self._heartbeat = DEFAULT_HEARTBEAT
        self._changed.clear()  # the first report carries the current health
        material = self._identity()
        yield control_pb2.InstanceReport(
            manifest=self._manifest,
            address=self._address,
            admin_address=self._admin_address,
            healthy=self._healthy(),
            zone=self._zone,
            mtls=material is not None,
            spiffe_id=material.spiffe_id.uri if material is not None else "",
        )
        while True:
            # A change that happened while the previous report was being sent is not lost:
            # the event is cleared only after it woke us.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), self._heartbeat)
            self._changed.clear()
            yield control_pb2.InstanceReport(healthy=self._healthy())
