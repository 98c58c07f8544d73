"""The sidecars this one calls, and their contracts.

A target sidecar's manifest (with its descriptors) is fetched from its
`Agent.GetManifest` once per address and compiled, so the egress knows what
the target implements, which skills stream or are idempotent, and how to
transcode HTTP/JSON calls. Addresses come from xDS endpoints, or from the
static `targets` of agent.yaml when no control plane routes the call.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass

import grpc

from agentmesh.v1 import agent_pb2, manifest_pb2
from sidecar.config.bootstrap import StaticTarget
from sidecar.contract import ContractSet, MethodContract
from sidecar.errors import NoRoute, UnknownMethod, UnknownTarget

log = logging.getLogger("agentmesh.sidecar.outbound")

MANIFEST_TIMEOUT = 2.0
# After a failed manifest fetch, lookups of that address fail fast for this long.
RETRY_AFTER = 1.0


@dataclass(frozen=True)
class Target:
    """A callable sidecar: its address and the agent its manifest describes."""

    address: str
    manifest: manifest_pb2.Manifest
    contract: ContractSet

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> str:
        return self.manifest.version

    def method(self, path: str) -> MethodContract:
        service = path.lstrip("/").partition("/")[0]
        if service not in self.contract.services:
            raise UnknownMethod(
                f"agent {self.name!r} at {self.address} does not implement {service} "
                f"(it implements: {', '.join(self.contract.services)})"
            )
        return self.contract.method(path)


class TargetDirectory:
    """Target contracts by address, channels by address, and agent.yaml's static targets."""

    def __init__(self, static: Iterable[StaticTarget], *, channel_options: list[tuple[str, object]]) -> None:
        self._static = {t.name: t.address for t in static}
        self._known: dict[str, Target] = {}
        self._failed_at: dict[str, float] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._channel_options = channel_options
        self._round_robin = itertools.count()

    def channel(self, address: str) -> grpc.aio.Channel:
        channel = self._channels.get(address)
        if channel is None:
            channel = grpc.aio.insecure_channel(address, options=self._channel_options)
            self._channels[address] = channel
        return channel

    async def close(self) -> None:
        await asyncio.gather(*(c.close(grace=None) for c in self._channels.values()))

    def describe(self) -> dict[str, object]:
        """For /config_dump."""
        return {
            "static": dict(self._static),
            "known": {
                address: {"agent": t.name, "version": t.version, "services": list(t.contract.services)}
                for address, t in sorted(self._known.items())
            },
        }

    async def at(self, address: str, *, name: str = "") -> Target:
        """The target listening at `address` (fetched once); NoRoute when it cannot be reached."""
        known = self._known.get(address)
        if known is not None:
            return known
        lock = self._locks.setdefault(address, asyncio.Lock())
        label = f"agent {name!r} at {address}" if name else f"sidecar at {address}"
        async with lock:
            if address in self._known:
                return self._known[address]
            if time.monotonic() - self._failed_at.get(address, float("-inf")) < RETRY_AFTER:
                raise NoRoute(f"{label} is unreachable")
            try:
                target = await self._fetch(address)
            except grpc.aio.AioRpcError as exc:
                self._failed_at[address] = time.monotonic()
                raise NoRoute(f"{label} is unreachable: {exc.details()}") from exc
            except ValueError as exc:
                self._failed_at[address] = time.monotonic()
                raise NoRoute(f"{label} serves an unusable contract: {exc}") from exc
            self._known[address] = target
            log.info("target at %s: %s %s, services %s", address, target.name, target.version, target.contract.services)
            return target

    async def prefetch(self, addresses: Iterable[str]) -> None:
        """Loads the contracts of targets not known yet (in the background, when config changes)."""
        missing = [a for a in addresses if a not in self._known]
        await asyncio.gather(*(self.at(a) for a in missing), return_exceptions=True)

    async def static(self, path: str, agent: str | None) -> Target:
        """Static routing (no control plane): the named target, or any static target implementing the service."""
        if agent:
            address = self._static.get(agent)
            if address is None:
                known = ", ".join(self._static) or "none"
                raise UnknownTarget(f"unknown agent {agent!r}: not among this sidecar's targets ({known})")
            target = await self.at(address, name=agent)
            target.method(path)
            return target
        service = path.lstrip("/").partition("/")[0]
        loaded = await asyncio.gather(
            *(self.at(address, name=name) for name, address in self._static.items()), return_exceptions=True
        )
        candidates = [t for t in loaded if isinstance(t, Target) and service in t.contract.services]
        if not candidates:
            unreachable = sorted(
                name for name, t in zip(self._static, loaded, strict=True) if not isinstance(t, Target)
            )
            hint = f"; unreachable targets: {', '.join(unreachable)}" if unreachable else ""
            raise NoRoute(f"no known agent implements {service}{hint}")
        return candidates[next(self._round_robin) % len(candidates)]

    async def _fetch(self, address: str) -> Target:
        call = self.channel(address).unary_unary(
            "/agentmesh.v1.Agent/GetManifest",
            request_serializer=agent_pb2.GetManifestRequest.SerializeToString,
            response_deserializer=manifest_pb2.Manifest.FromString,
        )
        manifest = await call(agent_pb2.GetManifestRequest(), timeout=MANIFEST_TIMEOUT)
        contract = ContractSet.compile(manifest.descriptors, services=manifest.services)
        return Target(address, manifest, contract)
