"""The sidecars this one calls: their contracts, the identity each must prove, and the channels to them.

A target sidecar's manifest (with its descriptors) is fetched from its
`Agent.GetManifest` once per address and compiled, so the egress knows what
the target implements, which skills stream or are idempotent, and how to
transcode HTTP/JSON calls. Addresses come from xDS endpoints, or from the
static `targets` of agent.yaml when no control plane routes the call.

Mutual TLS: an endpoint of a cluster with an UpstreamTlsContext must prove
the SPIFFE ID the cluster names; the channel to it presents this sidecar's
certificate and checks the target's by its DNS name
(`grpc.ssl_target_name_override`). Channels are keyed by (address, expected
identity, generation of our material): after a rotation, new calls get new
channels, and the old ones close once their last call ends, so no call or
stream is ever cut because of a rotation.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import grpc

from agentmesh.identity.material import IdentityMaterial
from agentmesh.identity.spiffe import SpiffeId
from agentmesh.v1 import agent_pb2, manifest_pb2
from sidecar.config.bootstrap import StaticTarget
from sidecar.config.snapshot import MeshSnapshot
from sidecar.contract import ContractSet, MethodContract
from sidecar.errors import NoRoute, UnknownMethod, UnknownTarget
from sidecar.identity import SidecarIdentity, channel_credentials

log = logging.getLogger("agentmesh.sidecar.outbound")

MANIFEST_TIMEOUT = 2.0
# After a failed manifest fetch, lookups of that address fail fast for this long.
RETRY_AFTER = 1.0


@dataclass(frozen=True)
class Target:
    """A callable sidecar: its address, the agent its manifest describes, and the identity it must prove."""

    address: str
    manifest: manifest_pb2.Manifest
    contract: ContractSet
    # None: plaintext.
    identity: SpiffeId | None = None

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> str:
        return self.manifest.version

    def method(self, path: str) -> MethodContract:
        # The contract holds only the methods of the services it implements: a hit needs no more checks.
        found = self.contract.methods.get(path)
        if found is not None:
            return found
        service = path.lstrip("/").partition("/")[0]
        if service not in self.contract.services:
            raise UnknownMethod(
                f"agent {self.name!r} at {self.address} does not implement {service} "
                f"(it implements: {', '.join(self.contract.services)})"
            )
        return self.contract.method(path)


@dataclass(frozen=True)
class _Ambiguous:
    """An address whose clusters allow several identities and none says which one is there."""

    identities: tuple[SpiffeId, ...]


_ChannelKey = tuple[str, SpiffeId | None, int]


# Call objects kept per channel, by method path; paths come from the agent, so bound it.
MAX_CALLABLES_PER_CHANNEL = 1024


@dataclass(eq=False)
class PooledChannel:
    key: _ChannelKey
    channel: grpc.aio.Channel
    in_flight: int = 0
    retired: bool = False
    # Raw-bytes multicallables by method path, made on a path's first call rather than on every call.
    unary_calls: dict[str, grpc.aio.UnaryUnaryMultiCallable] = field(default_factory=dict)
    stream_calls: dict[str, grpc.aio.UnaryStreamMultiCallable] = field(default_factory=dict)

    def unary(self, path: str) -> grpc.aio.UnaryUnaryMultiCallable:
        call = self.unary_calls.get(path)
        if call is None:
            call = self.channel.unary_unary(path, request_serializer=None, response_deserializer=None)
            if len(self.unary_calls) < MAX_CALLABLES_PER_CHANNEL:
                self.unary_calls[path] = call
        return call

    def stream(self, path: str) -> grpc.aio.UnaryStreamMultiCallable:
        call = self.stream_calls.get(path)
        if call is None:
            call = self.channel.unary_stream(path, request_serializer=None, response_deserializer=None)
            if len(self.stream_calls) < MAX_CALLABLES_PER_CHANNEL:
                self.stream_calls[path] = call
        return call


class ChannelPool:
    """Channels to target sidecars: plaintext by address, mTLS by (address, identity, material generation)."""

    def __init__(self, *, options: list[tuple[str, object]], identity: SidecarIdentity | None) -> None:
        self._options = options
        self._identity = identity
        self._channels: dict[_ChannelKey, PooledChannel] = {}
        # Retired by a rotation, still carrying calls; each closes after its last call.
        self._retiring: set[PooledChannel] = set()
        self._closing: set[asyncio.Task[None]] = set()
        self._warned_plaintext: set[str] = set()
        if identity is not None:
            identity.on_change(self._rotated)

    @contextlib.contextmanager
    def lease(self, address: str, expected: SpiffeId | None) -> Iterator[grpc.aio.Channel]:
        """The channel for one call, held until the call ends (a retired channel closes after its last call)."""
        with self.lease_pooled(address, expected) as entry:
            yield entry.channel

    @contextlib.contextmanager
    def lease_pooled(self, address: str, expected: SpiffeId | None) -> Iterator[PooledChannel]:
        """`lease`, yielding the pooled entry, whose call objects are made once per method path."""
        entry = self._entry(address, expected)
        entry.in_flight += 1
        try:
            yield entry
        finally:
            entry.in_flight -= 1
            if entry.retired and entry.in_flight == 0:
                self._retiring.discard(entry)
                self._close(entry)

    def _entry(self, address: str, expected: SpiffeId | None) -> PooledChannel:
        material = self._material(address, expected)
        key: _ChannelKey = (address, expected, material.generation) if material is not None else (address, None, 0)
        entry = self._channels.get(key)
        if entry is None:
            entry = PooledChannel(key, self._open(address, expected, material))
            self._channels[key] = entry
        return entry

    def _material(self, address: str, expected: SpiffeId | None) -> IdentityMaterial | None:
        """The material to dial `address` with; None for plaintext."""
        if expected is None:
            return None
        if self._identity is None:
            # This sidecar has no identity at all (mTLS off): it can only speak plaintext,
            # which a permissive target accepts and a strict one refuses.
            if address not in self._warned_plaintext:
                self._warned_plaintext.add(address)
                log.warning(
                    "the mesh expects mutual TLS to %s (%s) but this sidecar has no identity: calling in plaintext",
                    address,
                    expected.uri,
                )
            return None
        material = self._identity.material
        if material is None:
            raise NoRoute(f"cannot call {expected.uri} at {address} over mTLS yet: {self._identity.waiting_reason}")
        return material

    def _open(self, address: str, expected: SpiffeId | None, material: IdentityMaterial | None) -> grpc.aio.Channel:
        if material is None or expected is None:
            return grpc.aio.insecure_channel(address, options=self._options)
        options = [
            *self._options,
            ("grpc.ssl_target_name_override", expected.dns_name),
            # Connections of this channel only: a rotated channel never reuses the old one's handshake.
            ("grpc.use_local_subchannel_pool", 1),
        ]
        return grpc.aio.secure_channel(address, channel_credentials(material), options=options)

    def _rotated(self, material: IdentityMaterial) -> None:
        """New material: mTLS channels of older generations get no new calls and close when idle."""
        for key, entry in list(self._channels.items()):
            if key[1] is not None and key[2] != material.generation:
                del self._channels[key]
                entry.retired = True
                if entry.in_flight == 0:
                    self._close(entry)
                else:
                    self._retiring.add(entry)

    def _close(self, entry: PooledChannel) -> None:
        task = asyncio.ensure_future(entry.channel.close(grace=None))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        entries = [*self._channels.values(), *self._retiring]
        await asyncio.gather(*(entry.channel.close(grace=None) for entry in entries), *self._closing)
        self._channels.clear()
        self._retiring.clear()

    def describe(self) -> list[dict[str, object]]:
        """For /config_dump: open channels, with those a rotation retired (closing after their last call)."""
        entries = sorted([*self._channels.values(), *self._retiring], key=lambda e: (e.key[0], e.key[2]))
        return [
            {
                "address": entry.key[0],
                "identity": entry.key[1].uri if entry.key[1] is not None else None,
                "generation": entry.key[2] if entry.key[1] is not None else None,
                "in_flight": entry.in_flight,
                "retired": entry.retired,
            }
            for entry in entries
        ]


class TargetDirectory:
    """Target contracts by (address, identity), the identity each address must prove, channels, static targets."""

    def __init__(
        self,
        static: Iterable[StaticTarget],
        *,
        channel_options: list[tuple[str, object]],
        identity: SidecarIdentity | None = None,
    ) -> None:
        self._static = {t.name: t.address for t in static}
        self._known: dict[tuple[str, SpiffeId | None], Target] = {}
        self._failed_at: dict[tuple[str, SpiffeId | None], float] = {}
        self._locks: dict[tuple[str, SpiffeId | None], asyncio.Lock] = {}
        self._expected: dict[str, SpiffeId | _Ambiguous] = {}
        self.channels = ChannelPool(options=channel_options, identity=identity)
        self._round_robin = itertools.count()

    def expect(self, snapshot: MeshSnapshot) -> None:
        """Learns from a new xDS snapshot which identity the sidecar at each endpoint address must prove.

        An address in a cluster naming one identity must prove that one; an address
        only in clusters allowing several (a service over several agents) is
        ambiguous unless some single-identity cluster names it too. An address in no
        TLS cluster is plaintext.
        """
        single: dict[str, SpiffeId] = {}
        several: dict[str, tuple[SpiffeId, ...]] = {}
        for name, assignment in snapshot.endpoints.items():
            cluster = snapshot.clusters.get(name)
            if cluster is None or cluster.tls is None:
                continue
            identities = cluster.tls.identities
            for endpoint in assignment.endpoints:
                if len(identities) == 1:
                    single[endpoint.address] = identities[0]
                else:
                    several[endpoint.address] = identities
        expected: dict[str, SpiffeId | _Ambiguous] = {a: _Ambiguous(ids) for a, ids in several.items()}
        expected.update(single)
        self._expected = expected

    def expected_identity(self, address: str) -> SpiffeId | None:
        """The SPIFFE ID the sidecar at `address` must prove; None for plaintext; NoRoute when undecidable."""
        expected = self._expected.get(address)
        if isinstance(expected, _Ambiguous):
            allowed = ", ".join(i.uri for i in expected.identities)
            raise NoRoute(f"cannot tell which identity the sidecar at {address} must prove (one of {allowed})")
        return expected

    def lease(self, target: Target) -> contextlib.AbstractContextManager[PooledChannel]:
        """The pooled channel for one call to `target` (with its per-path call objects), held for the call's life."""
        return self.channels.lease_pooled(target.address, target.identity)

    async def close(self) -> None:
        await self.channels.close()

    def describe(self) -> dict[str, object]:
        """For /config_dump."""
        return {
            "static": dict(self._static),
            "known": {
                address: {
                    "agent": t.name,
                    "version": t.version,
                    "services": list(t.contract.services),
                    "identity": identity.uri if identity is not None else None,
                }
                for (address, identity), t in sorted(self._known.items(), key=lambda kv: kv[0][0])
            },
            "channels": self.channels.describe(),
        }

    async def at(self, address: str, *, name: str = "") -> Target:
        """The target listening at `address` (fetched once per expected identity); NoRoute when unreachable."""
        key = (address, self.expected_identity(address))
        known = self._known.get(key)
        if known is not None:
            return known
        lock = self._locks.setdefault(key, asyncio.Lock())
        label = f"agent {name!r} at {address}" if name else f"sidecar at {address}"
        async with lock:
            if key in self._known:
                return self._known[key]
            if time.monotonic() - self._failed_at.get(key, float("-inf")) < RETRY_AFTER:
                raise NoRoute(f"{label} is unreachable")
            try:
                target = await self._fetch(*key)
            except grpc.aio.AioRpcError as exc:
                self._failed_at[key] = time.monotonic()
                # A refused handshake (the peer is not who the cluster says) shows here, not to the caller.
                expected = f" (expecting {key[1].uri} over mTLS)" if key[1] is not None else ""
                log.warning("cannot load the contract of the %s%s: %s", label, expected, exc.details())
                raise NoRoute(f"{label} is unreachable: {exc.details()}") from exc
            except ValueError as exc:
                self._failed_at[key] = time.monotonic()
                raise NoRoute(f"{label} serves an unusable contract: {exc}") from exc
            self._known[key] = target
            log.info(
                "target at %s: %s %s, services %s%s",
                address,
                target.name,
                target.version,
                target.contract.services,
                f", mTLS as {target.identity.uri}" if target.identity is not None else "",
            )
            return target

    async def prefetch(self, addresses: Iterable[str]) -> None:
        """Loads the contracts of targets not known yet (in the background, when config changes)."""
        missing = []
        for address in addresses:
            with contextlib.suppress(NoRoute):
                if (address, self.expected_identity(address)) not in self._known:
                    missing.append(address)
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

    async def _fetch(self, address: str, identity: SpiffeId | None) -> Target:
        with self.channels.lease(address, identity) as channel:
            call = channel.unary_unary(
                "/agentmesh.v1.Agent/GetManifest",
                request_serializer=agent_pb2.GetManifestRequest.SerializeToString,
                response_deserializer=manifest_pb2.Manifest.FromString,
            )
            manifest = await call(agent_pb2.GetManifestRequest(), timeout=MANIFEST_TIMEOUT)
        contract = ContractSet.compile(manifest.descriptors, services=manifest.services)
        return Target(address, manifest, contract, identity)
