"""agentmesh.v1.Registration: sidecars announce their agent and report its health.

A sidecar opens one `Register` stream for its lifetime. The first report
carries the manifest and registers the instance; each later report is a
heartbeat with the agent's health. The instance is removed when the stream
closes (the sidecar stopped or lost the control plane) or, as a backstop, when
its reports stop for longer than the registry's TTL.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import grpc

from agentmesh.v1 import control_pb2, control_pb2_grpc
from control_plane.registry import Registry
from control_plane.registry.instances import RegistryError, UnknownInstanceError

log = logging.getLogger("agentmesh.control_plane.registration")


class RegistrationService(control_pb2_grpc.RegistrationServicer):
    def __init__(self, registry: Registry, *, heartbeat_interval: float) -> None:
        self._registry = registry
        self._heartbeat_ms = int(heartbeat_interval * 1000)

    async def Register(
        self, request_iterator: AsyncIterator[control_pb2.InstanceReport], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[control_pb2.RegistrationStatus]:
        instance_id: str | None = None
        try:
            async for report in request_iterator:
                if instance_id is None:
                    instance_id = await self._register(report, context)
                    yield control_pb2.RegistrationStatus(
                        instance_id=instance_id, heartbeat_interval_ms=self._heartbeat_ms
                    )
                    continue
                try:
                    self._registry.heartbeat(instance_id, report.healthy)
                except UnknownInstanceError:
                    # Expired (reports were late) or replaced: register again from the first report's data.
                    log.warning("instance %s reported after it was removed; ending its stream", instance_id)
                    await context.abort(grpc.StatusCode.NOT_FOUND, f"instance {instance_id} is no longer registered")
        finally:
            if instance_id is not None:
                removed = self._registry.deregister(instance_id)
                if removed is not None:
                    log.info("deregistered %s/%s at %s", removed.agent, removed.version, removed.address)

    async def _register(self, report: control_pb2.InstanceReport, context: grpc.aio.ServicerContext) -> str:
        if not report.HasField("manifest") or not report.manifest.name:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first report must carry the agent's manifest")
        manifest = report.manifest
        try:
            instance = self._registry.register(
                agent=manifest.name,
                version=manifest.version or "v1",
                team=manifest.team,
                address=report.address,
                services=manifest.services,
                manifest=manifest.SerializeToString(),
                healthy=report.healthy,
                zone=report.zone,
                instance_id=report.instance_id or None,
                admin_address=report.admin_address,
                mtls=report.mtls,
                spiffe_id=report.spiffe_id,
            )
        except RegistryError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"registration refused: {exc}")
            raise AssertionError("unreachable") from exc
        log.info(
            "registered %s/%s at %s (%s)",
            instance.agent,
            instance.version,
            instance.address,
            "healthy" if instance.healthy else "unhealthy",
        )
        return instance.instance_id
