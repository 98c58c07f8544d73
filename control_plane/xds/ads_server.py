"""The ADS endpoint: state-of-the-world `StreamAggregatedResources` over grpc.aio.

Serves what `SnapshotCache` holds for each node to any xDS v3 consumer (our
sidecars, Envoy, gRPC's proxyless xDS client) on one aggregated stream per
connection. Protocol, per stream and per type URL:

- A request without a response nonce is a (re)subscription and is answered
  at once when the node has a snapshot (else as soon as one is published).
- A request carrying the last nonce sent is an ACK (no `error_detail`) or a
  NACK (`error_detail` set). Both are recorded in `AckTracker`; a NACK is
  logged and counted and the rejected content is not sent again, so a
  consumer keeps its previous config until the next change.
- A request carrying any other nonce is stale and ignored; a nonce arriving
  for a type nothing was sent for yet (e.g. after a control-plane restart) is
  treated as a subscription.
- `resource_names` are honoured for every type: `*`, or an empty list on the
  first request (legacy wildcard, what Envoy sends for LDS and CDS), means
  every resource of the type; otherwise only the named ones are sent (what
  Envoy does for RDS/EDS and gRPC for all four). A changed subscription on an
  ACK is answered with the new selection.
- On a snapshot change, types go out in `PUSH_ORDER` (CDS, EDS, LDS, RDS) and
  only when the content selected for this stream changed, so a node whose
  resources did not change gets nothing.
- A subscription to a type this server does not serve is answered with an
  empty response (it holds no resources of that type: the consumer finishes
  its initial fetch instead of waiting for a timeout), a warning and a
  metric; other types and streams are unaffected.
- A request without a type URL is ignored with a warning; a stream whose
  first request has no `node.id` ends with INVALID_ARGUMENT.

When a node's snapshot is removed and there is no default, nothing is sent:
consumers keep their last config. Delta xDS is not served (UNIMPLEMENTED);
consumers are configured for state of the world.

Metrics (on the registry passed in): `agentmesh_cp_connected_proxies`,
`agentmesh_cp_push_duration_seconds{type}` (from the publication of a type's
version, or the stream's subscription if later, to the node's ACK of it),
`agentmesh_cp_nacks_total{type}`, `agentmesh_cp_ignored_requests_total{reason}`.
One service per registry: the metrics are registered when it is built.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, TypeVar

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import json_format
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from control_plane.xds.ack_tracker import AckTracker
from control_plane.xds.cache import SnapshotCache, Watch
from control_plane.xds.snapshot import (
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    PUSH_ORDER,
    RESOURCE_TYPES,
    TYPE_LABELS,
    selection_digest,
    type_label,
)

log = logging.getLogger(__name__)

DEFAULT_CONTROL_PLANE_ID = "agentmesh-control-plane"
PUSH_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# A stream may ask for a few types we do not serve; beyond this its requests for more are dropped.
MAX_UNKNOWN_TYPES_PER_STREAM = 8

_T = TypeVar("_T")


class AdsStats:
    """The control plane's xDS metrics, children pre-created per served type."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.connected_proxies = Gauge(
            "agentmesh_cp_connected_proxies", "Open ADS streams with an identified node.", registry=registry
        )
        self.push_duration = Histogram(
            "agentmesh_cp_push_duration_seconds",
            "Time from publishing a type's version to a node ACKing it.",
            ["type"],
            buckets=PUSH_DURATION_BUCKETS,
            registry=registry,
        )
        self.nacks = Counter("agentmesh_cp_nacks_total", "Responses rejected by a node.", ["type"], registry=registry)
        self.ignored = Counter(
            "agentmesh_cp_ignored_requests_total",
            "Discovery requests ignored: stale_nonce, unknown_type, malformed.",
            ["reason"],
            registry=registry,
        )
        for label in TYPE_LABELS.values():
            self.push_duration.labels(label)
            self.nacks.labels(label)
        for reason in ("stale_nonce", "unknown_type", "malformed"):
            self.ignored.labels(reason)


@dataclass(frozen=True)
class ConnectedNode:
    """One open ADS stream and the node behind it (from the first request's `node`)."""

    stream_id: int
    node_id: str
    cluster: str
    metadata: Mapping[str, Any]
    user_agent: str
    peer: str
    connected_since: float


@dataclass
class _TypeStream:
    """Per-stream protocol state for one type URL."""

    type_url: str
    subscribed_at: float
    wildcard: bool = False
    names: frozenset[str] = frozenset()
    nonce: str | None = None
    version: str | None = None
    digest: str | None = None
    acked_version: str | None = None
    # Set when clusters were re-sent: Envoy then asks for their assignments again and keeps the
    # clusters warming until it gets an answer, changed or not (xDS "eventual consistency").
    answer_next_request: bool = False

    def subscribe(self, resource_names: Iterable[str], *, first: bool) -> bool:
        """Applies a request's resource_names (xDS wildcard rules); True when the subscription changed."""
        names = frozenset(resource_names)
        before = (self.wildcard, self.names)
        if "*" in names:
            self.wildcard, self.names = True, names - {"*"}
        elif names:
            self.wildcard, self.names = False, names
        elif first:
            self.wildcard, self.names = True, frozenset()
        elif not self.wildcard:
            self.names = frozenset()
        return (self.wildcard, self.names) != before


class AggregatedDiscoveryService(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    """The ADS servicer: one `_AdsStream` per `StreamAggregatedResources` call.

    `connected_nodes()` lists the open streams for the admin API and CLI; ACK
    state is in the `AckTracker` passed in.
    """

    def __init__(
        self,
        cache: SnapshotCache,
        tracker: AckTracker,
        *,
        registry: CollectorRegistry | None = None,
        control_plane_id: str = DEFAULT_CONTROL_PLANE_ID,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.cache = cache
        self.tracker = tracker
        self.stats = AdsStats(registry if registry is not None else CollectorRegistry())
        self._control_plane = base_pb2.ControlPlane(identifier=control_plane_id)
        self._wall_clock = wall_clock
        self._streams: dict[int, ConnectedNode] = {}
        self._stream_ids = itertools.count(1)
        self._nonces = itertools.count(1)
        # Nonces from a previous run of the server never match one of ours.
        self._nonce_prefix = secrets.token_hex(4)

    def add_to_server(self, server: grpc.aio.Server) -> None:
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(self, server)

    def connected_nodes(self) -> list[ConnectedNode]:
        """Open streams with an identified node, ordered by node id then stream."""
        return sorted(self._streams.values(), key=lambda n: (n.node_id, n.stream_id))

    async def StreamAggregatedResources(
        self, request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        stream = _AdsStream(self, next(self._stream_ids), context)
        async for response in stream.run(request_iterator):
            yield response

    async def DeltaAggregatedResources(
        self, request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "delta xDS is not served; use state-of-the-world ADS")

    def _next_nonce(self) -> str:
        return f"{self._nonce_prefix}-{next(self._nonces)}"

    def _response(self, type_url: str, version: str, resources: Iterable[Any]) -> Any:
        return discovery_pb2.DiscoveryResponse(
            version_info=version,
            type_url=type_url,
            nonce=self._next_nonce(),
            resources=resources,
            control_plane=self._control_plane,
        )

    def _opened(self, node: ConnectedNode) -> None:
        self._streams[node.stream_id] = node
        self.stats.connected_proxies.inc()

    def _closed(self, node: ConnectedNode) -> None:
        if self._streams.pop(node.stream_id, None) is None:
            return
        self.stats.connected_proxies.dec()
        if not any(other.node_id == node.node_id for other in self._streams.values()):
            self.tracker.forget(node.node_id)


async def _next(requests: AsyncIterator[_T]) -> _T | None:
    try:
        return await anext(requests)
    except StopAsyncIteration:
        return None


def _user_agent(node: Any) -> str:
    version = node.user_agent_version
    if not version and node.HasField("user_agent_build_version"):
        semantic = node.user_agent_build_version.version
        version = f"{semantic.major_number}.{semantic.minor_number}.{semantic.patch}"
    return f"{node.user_agent_name} {version}".strip()


def _settle(task: asyncio.Future[Any]) -> None:
    """Cancels a helper task, or collects its outcome so it is never reported as unretrieved."""
    if not task.done():
        task.cancel()
    elif not task.cancelled():
        task.exception()


class _AdsStream:
    """One `StreamAggregatedResources` call: reads requests and watches the node's snapshot."""

    def __init__(self, service: AggregatedDiscoveryService, stream_id: int, context: Any) -> None:
        self._service = service
        self._cache = service.cache
        self._tracker = service.tracker
        self._stats = service.stats
        self._context = context
        self._stream_id = stream_id
        self._node: ConnectedNode | None = None
        self._watch: Watch | None = None
        self._types: dict[str, _TypeStream] = {}
        self._unknown_types: set[str] = set()
        self._changed = asyncio.Event()
        self._loop = asyncio.get_running_loop()

    async def run(self, requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
        """Yields responses until the consumer half-closes or cancels the stream."""
        reading: asyncio.Future[Any] = asyncio.ensure_future(_next(requests))
        changing: asyncio.Future[Any] = asyncio.ensure_future(self._changed.wait())
        try:
            while True:
                done, _ = await asyncio.wait({reading, changing}, return_when=asyncio.FIRST_COMPLETED)
                if reading in done:
                    request = reading.result()
                    if request is None:
                        return
                    for response in await self._on_request(request):
                        yield response
                    reading = asyncio.ensure_future(_next(requests))
                if changing in done:
                    self._changed.clear()
                    for response in self._on_change():
                        yield response
                    changing = asyncio.ensure_future(self._changed.wait())
        finally:
            _settle(reading)
            _settle(changing)
            self._close()

    def _close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
        if self._node is not None:
            self._service._closed(self._node)
            log.info("xDS stream closed", extra={"node_id": self._node.node_id, "stream_id": self._stream_id})

    def _on_cache_change(self) -> None:
        # Called inside SnapshotCache.set_*; possibly from another thread, so hop onto our loop.
        self._loop.call_soon_threadsafe(self._changed.set)

    @property
    def _node_id(self) -> str:
        return self._node.node_id if self._node is not None else ""

    async def _identify(self, node: Any) -> None:
        if not node.id:
            await self._context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "the first DiscoveryRequest on a stream must carry node.id"
            )
        self._node = ConnectedNode(
            stream_id=self._stream_id,
            node_id=node.id,
            cluster=node.cluster,
            metadata=MappingProxyType(json_format.MessageToDict(node.metadata)),
            user_agent=_user_agent(node),
            peer=self._context.peer(),
            connected_since=self._service._wall_clock(),
        )
        self._service._opened(self._node)
        self._watch = self._cache.watch(node.id, self._on_cache_change)
        log.info(
            "xDS stream opened",
            extra={"node_id": node.id, "stream_id": self._stream_id, "user_agent": self._node.user_agent},
        )

    async def _on_request(self, request: Any) -> list[Any]:
        if self._node is None:
            await self._identify(request.node)
        type_url = request.type_url
        if not type_url:
            self._stats.ignored.labels("malformed").inc()
            log.warning("xDS request without type_url ignored", extra={"node_id": self._node_id})
            return []
        if type_url not in RESOURCE_TYPES:
            return self._on_unknown_type(request)
        state = self._types.get(type_url)
        first = state is None
        if state is None:
            state = self._types[type_url] = _TypeStream(type_url, subscribed_at=self._cache.clock())
        nonce = request.response_nonce
        if nonce and state.nonce is not None and nonce != state.nonce:
            self._stats.ignored.labels("stale_nonce").inc()
            log.debug(
                "stale xDS nonce ignored",
                extra={"node_id": self._node_id, "type_url": type_url, "nonce": nonce, "expected": state.nonce},
            )
            return []
        initial = not nonce or state.nonce is None
        changed = state.subscribe(request.resource_names, first=first)
        if not initial:
            if request.HasField("error_detail"):
                self._on_nack(state, request)
            else:
                self._on_ack(state, request)
        if initial or changed or state.answer_next_request:
            force = initial or state.answer_next_request
            state.answer_next_request = False
            return self._respond(state, force=force)
        return []

    def _on_unknown_type(self, request: Any) -> list[Any]:
        type_url = request.type_url
        if type_url not in self._unknown_types:
            if len(self._unknown_types) >= MAX_UNKNOWN_TYPES_PER_STREAM:
                self._stats.ignored.labels("malformed").inc()
                return []
            self._unknown_types.add(type_url)
            self._stats.ignored.labels("unknown_type").inc()
            log.warning(
                "xDS request for a type this server does not serve; answering with no resources",
                extra={"node_id": self._node_id, "type_url": type_url},
            )
        if request.response_nonce:
            return []
        return [self._service._response(type_url, "", ())]

    def _on_ack(self, state: _TypeStream, request: Any) -> None:
        self._tracker.record_request(
            self._node_id, state.type_url, response_nonce=request.response_nonce, version_info=request.version_info
        )
        if request.version_info != state.version or state.acked_version == state.version:
            return
        state.acked_version = state.version
        entry = self._cache.entry(self._node_id)
        if entry is None or entry.version(state.type_url) != state.version:
            return
        started = max(entry.published_at.get(state.type_url, state.subscribed_at), state.subscribed_at)
        self._stats.push_duration.labels(type_label(state.type_url)).observe(max(0.0, self._cache.clock() - started))

    def _on_nack(self, state: _TypeStream, request: Any) -> None:
        detail = request.error_detail
        self._tracker.record_request(
            self._node_id,
            state.type_url,
            response_nonce=request.response_nonce,
            version_info=request.version_info,
            error_code=detail.code,
            error_message=detail.message,
        )
        self._stats.nacks.labels(type_label(state.type_url)).inc()
        log.warning(
            "xDS NACK",
            extra={
                "node_id": self._node_id,
                "type_url": state.type_url,
                "rejected_version": state.version,
                "nonce": request.response_nonce,
                "error_detail": detail.message,
            },
        )

    def _on_change(self) -> list[Any]:
        responses: list[Any] = []
        for type_url in PUSH_ORDER:
            state = self._types.get(type_url)
            if state is not None:
                responses.extend(self._respond(state, force=False))
        return responses

    def _respond(self, state: _TypeStream, *, force: bool) -> list[Any]:
        """The response for `state`'s subscription, or nothing when there is no snapshot or no change."""
        entry = self._cache.entry(self._node_id)
        if entry is None or not (state.wildcard or state.names):
            return []
        snapshot = entry.snapshot
        available = snapshot.resources(state.type_url)
        if state.wildcard:
            names = list(available)
            digest = snapshot.digest(state.type_url)
        else:
            names = [name for name in available if name in state.names]
            digests = snapshot.resource_digests(state.type_url)
            digest = selection_digest((name, digests[name]) for name in names)
        if not force and digest == state.digest:
            return []
        version = entry.version(state.type_url)
        response = self._service._response(state.type_url, version, (available[name] for name in names))
        state.nonce, state.version, state.digest = response.nonce, version, digest
        self._tracker.record_sent(self._node_id, state.type_url, version=version, nonce=response.nonce)
        if state.type_url == CLUSTER_TYPE and (endpoints := self._types.get(ENDPOINT_TYPE)) is not None:
            endpoints.answer_next_request = True
        elif state.type_url == ENDPOINT_TYPE:
            state.answer_next_request = False  # the assignments went out after the clusters
        log.debug(
            "xDS response sent",
            extra={
                "node_id": self._node_id,
                "type_url": state.type_url,
                "version": version,
                "nonce": response.nonce,
                "resources": len(names),
            },
        )
        return [response]
