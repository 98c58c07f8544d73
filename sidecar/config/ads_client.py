"""The sidecar's xDS client: one state-of-the-world ADS stream to the control plane.

`AdsClient.run()` keeps a `StreamAggregatedResources` stream open and turns
what arrives into `MeshSnapshot`s for the request path:

- Subscriptions: LDS and CDS as wildcards; RDS for every route configuration
  an accepted api listener names; EDS for every assignment an accepted
  cluster names. When those sets change the client re-subscribes (on the
  type's last nonce, as Envoy does) and drops what it no longer asks for.
- Each response is decoded whole (sidecar/config/decode). If any resource
  fails, the response is NACKed: the version last accepted for the type, the
  response's nonce and an `error_detail` (INVALID_ARGUMENT, the decode
  message); the previous config stays. Otherwise the resources replace the
  type's (LDS, CDS) or update the subscribed ones (RDS, EDS), the response is
  ACKed and a new MeshSnapshot of all four types is published.
- Start-up: the first snapshot waits until LDS and CDS have answered and the
  RDS and EDS names they reference have been answered once, so the request
  path never starts from half a config (after `initial_fetch_timeout`, what
  has arrived is published anyway, as Envoy does). After that every accepted
  update is published at once; a route naming a cluster that has not arrived
  (yet) is published too, and the request path treats an unknown cluster as
  no route.
- Every snapshot published on an accepted update is saved to `persist_path`
  (sidecar/config/persist.py). When the control plane cannot be reached
  before the first snapshot, or sends nothing within `initial_fetch_timeout`,
  the sidecar runs on the saved copy (`source == "disk"`) until the control
  plane answers.
- A broken stream is reopened after an exponential backoff with jitter
  (0.5 s doubling to 30 s, each wait between half and all of it; reset by a
  stream that delivered a response), re-subscribing to every type with the
  versions last accepted. The published config stays in place meanwhile.

Metrics (SidecarStats): `agentmesh_xds_connected`, `agentmesh_xds_rejected_total{type}`,
`agentmesh_xds_config_from_disk`. `describe()` is the xDS part of /config_dump.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import struct_pb2
from google.rpc import code_pb2, status_pb2

import agentmesh
from agentmesh.identity.control_plane_tls import ControlPlaneTls, open_aio_channel
from sidecar.config import persist
from sidecar.config.decode import (
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    LISTENER_TYPE,
    ROUTE_TYPE,
    TYPE_URLS,
    Decoded,
    DecodeError,
    assemble,
    assignment_names,
    decode_all,
    route_names,
    type_label,
)
from sidecar.config.snapshot import EMPTY_SNAPSHOT, MeshSnapshot
from sidecar.stats import SidecarStats

log = logging.getLogger("agentmesh.sidecar.xds")

Source = Literal["xds", "disk", "none"]

DEFAULT_BACKOFF_START = 0.5
DEFAULT_BACKOFF_MAX = 30.0
# Envoy's default initial_fetch_timeout: how long to wait for a first config before using the saved one.
DEFAULT_INITIAL_FETCH_TIMEOUT = 15.0
USER_AGENT = "agentmesh-sidecar"

_CHANNEL_OPTIONS = (
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    # Notice a dead control plane on an idle stream; the server permits one ping per 10 s.
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
)


@dataclass(frozen=True)
class NodeIdentity:
    """Who this sidecar is to the control plane: `node.id` is `<agent>~<instance address>`."""

    agent: str
    # host:port other sidecars reach this instance's inbound listener at.
    address: str
    version: str = ""
    team: str = ""
    zone: str = ""

    @property
    def node_id(self) -> str:
        return f"{self.agent}~{self.address}"

    def to_proto(self) -> base_pb2.Node:
        """config.core.v3.Node: id, cluster (the agent), metadata (agent, version, team), zone, user agent."""
        metadata = struct_pb2.Struct()
        metadata.update({"agent": self.agent, "version": self.version, "team": self.team})
        node = base_pb2.Node(
            id=self.node_id,
            cluster=self.agent,
            metadata=metadata,
            user_agent_name=USER_AGENT,
            user_agent_version=agentmesh.__version__,
        )
        if self.zone:
            node.locality.zone = self.zone
        return node


@dataclass(frozen=True)
class Nack:
    """The last response rejected: its type, version and nonce, the message sent and when (wall clock)."""

    type_url: str
    version: str
    nonce: str
    message: str
    at: float


class _TypeState:
    """One resource type: its subscription, accepted resources and version, and per-stream nonce."""

    __slots__ = ("accepted", "names", "nonce", "requested", "resources", "settled", "type_url", "version", "wildcard")

    def __init__(self, type_url: str, *, wildcard: bool) -> None:
        self.type_url = type_url
        self.wildcard = wildcard
        self.names: frozenset[str] = frozenset()
        self.resources: dict[str, Decoded] = {}
        self.version = ""  # version_info last accepted (sent back in every request)
        self.accepted = False  # some response of this type was accepted
        self.nonce = ""  # nonce of the last response on the current stream
        self.requested = False  # a request for this type went out on the current stream
        # Nothing asked for is still unanswered: false from a (re)subscription until its response.
        self.settled = not wildcard

    def request(self, *, nonce: str, error: str | None = None) -> discovery_pb2.DiscoveryRequest:
        request = discovery_pb2.DiscoveryRequest(
            version_info=self.version,
            type_url=self.type_url,
            response_nonce=nonce,
            # An empty list on a wildcard type is the legacy wildcard every xDS server understands.
            resource_names=() if self.wildcard else sorted(self.names),
        )
        if error is not None:
            request.error_detail.CopyFrom(status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message=error))
        return request


async def _drain(queue: asyncio.Queue[discovery_pb2.DiscoveryRequest]) -> AsyncIterator[discovery_pb2.DiscoveryRequest]:
    while True:
        yield await queue.get()


def _iso(at: float | None) -> str | None:
    return None if at is None else datetime.fromtimestamp(at, UTC).isoformat()


class AdsClient:
    """ADS subscription, decoding, ACK/NACK and the last good config on disk, for one sidecar."""

    def __init__(
        self,
        *,
        target: str,
        node: NodeIdentity,
        stats: SidecarStats,
        persist_path: Path | None,
        on_snapshot: Callable[[MeshSnapshot], None],
        backoff_start: float = DEFAULT_BACKOFF_START,
        backoff_max: float = DEFAULT_BACKOFF_MAX,
        initial_fetch_timeout: float = DEFAULT_INITIAL_FETCH_TIMEOUT,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
        tls: ControlPlaneTls | None = None,
    ) -> None:
        if not 0 < backoff_start <= backoff_max:
            raise ValueError(f"need 0 < backoff_start <= backoff_max, got {backoff_start} and {backoff_max}")
        self._target = target
        # TLS to the control plane's secure port (agentmesh/identity/control_plane_tls.py); None: plaintext.
        self._tls = tls
        self._node = node
        self._node_proto = node.to_proto()
        self._stats = stats
        self._persist_path = persist_path
        self._on_snapshot = on_snapshot
        self._backoff_start = backoff_start
        self._backoff_max = backoff_max
        self._initial_fetch_timeout = initial_fetch_timeout
        self._rng = rng or random.Random()
        self._clock = clock
        self._types = {
            LISTENER_TYPE: _TypeState(LISTENER_TYPE, wildcard=True),
            ROUTE_TYPE: _TypeState(ROUTE_TYPE, wildcard=False),
            CLUSTER_TYPE: _TypeState(CLUSTER_TYPE, wildcard=True),
            ENDPOINT_TYPE: _TypeState(ENDPOINT_TYPE, wildcard=False),
        }
        self._current: MeshSnapshot = EMPTY_SNAPSHOT
        self._source: Source = "none"
        self._last_update: float | None = None
        self._connected = False
        self._last_nack: Nack | None = None
        self._saved: persist.SavedConfig | None = None
        self._told_no_saved_config = False
        self._warm = False  # a snapshot from xDS was published
        self._node_sent = False

    def __repr__(self) -> str:
        return f"AdsClient(target={self._target!r}, node={self._node.node_id!r}, source={self._source!r})"

    @property
    def current(self) -> MeshSnapshot:
        """The snapshot last published (EMPTY_SNAPSHOT before the first)."""
        return self._current

    @property
    def source(self) -> Source:
        """Where `current` came from: "xds", "disk" (the saved copy) or "none" (nothing yet)."""
        return self._source

    @property
    def last_update(self) -> float | None:
        """When `current` was received (wall-clock seconds); for a saved copy, when it was saved."""
        return self._last_update

    @property
    def connected(self) -> bool:
        """True while an ADS stream is up (it has delivered a response and not failed since)."""
        return self._connected

    @property
    def last_nack(self) -> Nack | None:
        return self._last_nack

    def describe(self) -> dict[str, Any]:
        """The xDS state for /config_dump: source, connection, versions and resources per type, last NACK."""
        current = self._current
        nack = self._last_nack
        return {
            "target": self._target,
            "node": {"id": self._node.node_id, "cluster": self._node.agent},
            "source": self._source,
            "connected": self._connected,
            "last_update": _iso(self._last_update),
            "versions": {type_label(t): v for t, v in current.versions.items()},
            "resources": {type_label(t): sorted(by_name) for t, by_name in current.raw.items()},
            "subscriptions": {type_label(t): sorted(s.names) for t, s in self._types.items() if not s.wildcard},
            "last_nack": None
            if nack is None
            else {
                "type": type_label(nack.type_url),
                "version": nack.version,
                "nonce": nack.nonce,
                "message": nack.message,
                "at": _iso(nack.at),
            },
        }

    async def run(self) -> None:
        """Keeps the ADS stream up until cancelled; never raises for control-plane or config problems."""
        if self._persist_path is not None and self._saved is None:
            self._saved = await asyncio.to_thread(persist.read, self._persist_path, agent=self._node.agent)
        timer = asyncio.get_running_loop().call_later(self._initial_fetch_timeout, self._initial_fetch_timed_out)
        backoff = self._backoff_start
        try:
            while True:
                try:
                    delivered = await self._stream()
                except Exception:
                    log.exception("xDS stream to %s failed unexpectedly", self._target)
                    delivered = False
                if delivered:
                    backoff = self._backoff_start
                self._fall_back_to_disk(f"the control plane at {self._target} is unreachable")
                delay = backoff * (0.5 + 0.5 * self._rng.random())
                log.info("reconnecting to the control plane at %s in %.1fs", self._target, delay)
                await asyncio.sleep(delay)
                backoff = min(backoff * 2, self._backoff_max)
        finally:
            timer.cancel()
            self._set_connected(False)

    async def _stream(self) -> bool:
        """One ADS stream until it fails or the server ends it; True when it delivered a response."""
        queue: asyncio.Queue[discovery_pb2.DiscoveryRequest] = asyncio.Queue()
        self._node_sent = False
        for state in self._types.values():
            state.nonce, state.requested = "", False
        for type_url in TYPE_URLS:  # clusters and endpoints before listeners and routes, as Envoy asks
            state = self._types[type_url]
            if state.wildcard or state.names:
                self._send(queue, state, nonce="")
        delivered = False
        async with open_aio_channel(self._target, self._tls, _CHANNEL_OPTIONS) as channel:
            call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources(_drain(queue))
            try:
                async for response in call:
                    if not delivered:
                        delivered = True
                        self._set_connected(True)
                    await self._on_response(response, queue)
                log.warning("the control plane at %s closed the xDS stream", self._target)
            except grpc.aio.AioRpcError as exc:
                verb = "lost" if delivered else "failed"
                log.warning("xDS stream to %s %s: %s %s", self._target, verb, exc.code().name, exc.details())
            finally:
                call.cancel()
                self._set_connected(False)
        return delivered

    def _send(
        self,
        queue: asyncio.Queue[discovery_pb2.DiscoveryRequest],
        state: _TypeState,
        *,
        nonce: str,
        error: str | None = None,
    ) -> None:
        request = state.request(nonce=nonce, error=error)
        if not self._node_sent:
            request.node.CopyFrom(self._node_proto)
            self._node_sent = True
        state.requested = True
        queue.put_nowait(request)

    async def _on_response(
        self, response: discovery_pb2.DiscoveryResponse, queue: asyncio.Queue[discovery_pb2.DiscoveryRequest]
    ) -> None:
        state = self._types.get(response.type_url)
        if state is None:
            log.warning("ignoring an xDS response of a type never asked for: %s", response.type_url)
            return
        state.nonce = response.nonce
        try:
            decoded = decode_all(state.type_url, response.resources, agent=self._node.agent, previous=state.resources)
        except DecodeError as exc:
            self._nack(queue, state, response, str(exc))
            return
        if state.wildcard:
            state.resources = decoded
        else:
            # RDS/EDS: resources not in a response are not deleted; they go when nothing references them.
            merged = {**state.resources, **decoded}
            state.resources = {name: d for name, d in merged.items() if name in state.names}
        state.version, state.accepted, state.settled = response.version_info, True, True
        self._send(queue, state, nonce=response.nonce)
        if state.type_url == LISTENER_TYPE:
            self._subscribe(queue, self._types[ROUTE_TYPE], route_names(state.resources))
        elif state.type_url == CLUSTER_TYPE:
            self._subscribe(queue, self._types[ENDPOINT_TYPE], assignment_names(state.resources))
        if self._warm or all(s.settled for s in self._types.values()):
            snapshot = self._publish()
            await self._save(snapshot)

    def _subscribe(
        self, queue: asyncio.Queue[discovery_pb2.DiscoveryRequest], state: _TypeState, names: frozenset[str]
    ) -> None:
        if names == state.names:
            return
        state.names = names
        state.resources = {name: d for name, d in state.resources.items() if name in names}
        state.settled = not names
        # Never send an empty first request: the server would read it as a wildcard.
        if names or state.requested:
            self._send(queue, state, nonce=state.nonce)

    def _nack(
        self,
        queue: asyncio.Queue[discovery_pb2.DiscoveryRequest],
        state: _TypeState,
        response: discovery_pb2.DiscoveryResponse,
        message: str,
    ) -> None:
        label = type_label(state.type_url)
        self._last_nack = Nack(state.type_url, response.version_info, response.nonce, message, self._clock())
        self._stats.xds_rejected(label)
        log.warning(
            "rejected %s version %s from the control plane, keeping %s: %s",
            label,
            response.version_info,
            state.version or "nothing",
            message,
            extra={"type_url": state.type_url, "nonce": response.nonce},
        )
        self._send(queue, state, nonce=response.nonce, error=message)

    def _publish(self) -> MeshSnapshot:
        accepted = [s for s in self._types.values() if s.accepted]
        snapshot = assemble({s.type_url: s.resources for s in accepted}, {s.type_url: s.version for s in accepted})
        if self._source != "xds":
            log.info("xDS config received from %s", self._target, extra={"versions": dict(snapshot.versions)})
        self._warm = True
        self._set_current(snapshot, "xds", self._clock())
        return snapshot

    async def _save(self, snapshot: MeshSnapshot) -> None:
        if self._persist_path is None:
            return
        try:
            await asyncio.to_thread(persist.save, self._persist_path, snapshot, agent=self._node.agent)
        except OSError as exc:
            log.warning("cannot save the xDS config to %s: %s", self._persist_path, exc)

    def _initial_fetch_timed_out(self) -> None:
        """Envoy's initial_fetch_timeout: go on with what has arrived, else with the saved config."""
        if self._warm:
            return
        waiting = sorted(type_label(s.type_url) for s in self._types.values() if not s.settled)
        reason = f"no complete config from the control plane within {self._initial_fetch_timeout:g}s"
        if any(s.accepted for s in self._types.values()):
            log.warning("%s (still waiting for %s); using what has arrived", reason, ", ".join(waiting))
            self._publish()
        else:
            self._fall_back_to_disk(reason)

    def _fall_back_to_disk(self, reason: str) -> None:
        if self._source != "none":
            return
        if self._saved is None:
            if not self._told_no_saved_config:
                self._told_no_saved_config = True
                log.warning("%s and no saved xDS config; running without xDS config until it answers", reason)
            return
        age = max(0.0, self._clock() - self._saved.written_at)
        log.warning("%s; running on the xDS config saved to %s %.0fs ago", reason, self._persist_path, age)
        self._set_current(self._saved.snapshot, "disk", self._saved.written_at)

    def _set_current(self, snapshot: MeshSnapshot, source: Source, updated_at: float) -> None:
        self._current, self._source, self._last_update = snapshot, source, updated_at
        self._stats.set_xds_config_from_disk(source == "disk")
        try:
            self._on_snapshot(snapshot)
        except Exception:
            log.exception("the xDS snapshot consumer failed")

    def _set_connected(self, connected: bool) -> None:
        if connected == self._connected:
            return
        self._connected = connected
        self._stats.set_xds_connected(connected)
        if connected:  # going down is logged where the stream ends, with the reason
            log.info("xDS stream to %s is up as %s", self._target, self._node.node_id)
