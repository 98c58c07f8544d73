"""The agents this sidecar can call, and their contracts.

Until a control plane supplies routes, targets come from agent.yaml's static
`targets`. Each target's manifest (with its descriptors) is fetched from the
target sidecar's `Agent.GetManifest` and compiled once, so the egress knows
which services each target implements and can transcode HTTP/JSON calls.
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
# After a failed manifest fetch, calls fail fast for this long before trying again.
RETRY_AFTER = 1.0


@dataclass(frozen=True)
class Target:
    """A callable agent: where its sidecar listens and what it implements."""

    name: str
    address: str
    manifest: manifest_pb2.Manifest
    contract: ContractSet

    @property
    def version(self) -> str:
        return self.manifest.version


class TargetDirectory:
    """Resolves (method path, optional agent name) to a target and its method contract."""

    def __init__(self, targets: Iterable[StaticTarget], *, channel_options: list[tuple[str, object]]) -> None:
        self._static = {t.name: t for t in targets}
        self._known: dict[str, Target] = {}
        self._failed_at: dict[str, float] = {}
        self._locks = {name: asyncio.Lock() for name in self._static}
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

    def describe(self) -> list[dict[str, object]]:
        """For /config_dump."""
        return [
            {
                "name": t.name,
                "address": t.address,
                "version": self._known[t.name].version if t.name in self._known else None,
                "services": list(self._known[t.name].contract.services) if t.name in self._known else [],
            }
            for t in self._static.values()
        ]

    async def resolve(self, path: str, agent: str | None) -> tuple[Target, MethodContract]:
        service = path.lstrip("/").partition("/")[0]
        if agent:
            target = await self._load(agent)
            if service not in target.contract.services:
                raise UnknownMethod(
                    f"agent {agent!r} does not implement {service} (it implements: "
                    f"{', '.join(target.contract.services)})"
                )
            return target, target.contract.method(path)
        await self._load_all()
        candidates = [t for t in self._known.values() if service in t.contract.services]
        if not candidates:
            unreachable = sorted(set(self._static) - set(self._known))
            hint = f"; unreachable targets: {', '.join(unreachable)}" if unreachable else ""
            raise NoRoute(f"no known agent implements {service}{hint}")
        target = candidates[next(self._round_robin) % len(candidates)]
        return target, target.contract.method(path)

    async def _load_all(self) -> None:
        missing = [name for name in self._static if name not in self._known]
        if missing:
            await asyncio.gather(*(self._load(name) for name in missing), return_exceptions=True)

    async def _load(self, name: str) -> Target:
        known = self._known.get(name)
        if known is not None:
            return known
        static = self._static.get(name)
        if static is None:
            raise UnknownTarget(f"unknown agent {name!r}: not among this sidecar's targets ({', '.join(self._static)})")
        async with self._locks[name]:
            if name in self._known:
                return self._known[name]
            if time.monotonic() - self._failed_at.get(name, float("-inf")) < RETRY_AFTER:
                raise NoRoute(f"agent {name!r} at {static.address} is unreachable")
            try:
                target = await self._fetch(static)
            except grpc.aio.AioRpcError as exc:
                self._failed_at[name] = time.monotonic()
                raise NoRoute(f"agent {name!r} at {static.address} is unreachable: {exc.details()}") from exc
            except ValueError as exc:
                self._failed_at[name] = time.monotonic()
                raise NoRoute(f"agent {name!r} at {static.address} serves an unusable contract: {exc}") from exc
            self._known[name] = target
            log.info("target %s resolved: version %s, services %s", name, target.version, target.contract.services)
            return target

    async def _fetch(self, static: StaticTarget) -> Target:
        call = self.channel(static.address).unary_unary(
            "/agentmesh.v1.Agent/GetManifest",
            request_serializer=agent_pb2.GetManifestRequest.SerializeToString,
            response_deserializer=manifest_pb2.Manifest.FromString,
        )
        manifest = await call(agent_pb2.GetManifestRequest(), timeout=MANIFEST_TIMEOUT)
        contract = ContractSet.compile(manifest.descriptors, services=manifest.services)
        return Target(static.name, static.address, manifest, contract)
