"""Many simulated sidecars on ADS, in one process: `python -m bench.ads_swarm --target ... --clients N`.

Each client is one grpc.aio channel (its own TCP connection) with one
state-of-the-world `StreamAggregatedResources` stream, subscribed the way
our sidecar subscribes (sidecar/config/ads_client.py): LDS and CDS as
wildcards, then RDS for every route configuration an api listener names and
EDS for every EDS cluster, re-subscribing when those sets change, and
ACKing every response. It decodes nothing else; the names of a given
(type, version) are decoded once per process, since every node of the mesh
receives the same default snapshot.

Commands on stdin, one JSON answer per line on stdout:

- `status`: {"clients", "connected", "synced", "failed"} (synced: ACKed all four types);
- `mark`: each client remembers the versions it has seen; the next ACK of a
  version it had not seen is the change arriving;
- `report`: {"acked": [monotonic time of each client's last ACK of a new
  version since the mark, or null]} (CLOCK_MONOTONIC is shared by processes);
- `quit`: close every stream and exit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from collections.abc import Iterable
from typing import Any

import grpc
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import struct_pb2

_PREFIX = "type.googleapis.com/"
LISTENER_TYPE = _PREFIX + "envoy.config.listener.v3.Listener"
ROUTE_TYPE = _PREFIX + "envoy.config.route.v3.RouteConfiguration"
CLUSTER_TYPE = _PREFIX + "envoy.config.cluster.v3.Cluster"
ENDPOINT_TYPE = _PREFIX + "envoy.config.endpoint.v3.ClusterLoadAssignment"
ALL_TYPES = (LISTENER_TYPE, CLUSTER_TYPE, ROUTE_TYPE, ENDPOINT_TYPE)
CHANNEL_OPTIONS = [
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]
RECONNECT_LIMIT = 3


def route_names(resources: Iterable[Any]) -> tuple[str, ...]:
    """Route configurations the api listeners of an LDS response name (what a sidecar subscribes to)."""
    names: set[str] = set()
    for packed in resources:
        listener = listener_pb2.Listener()
        packed.Unpack(listener)
        if listener.HasField("api_listener"):
            manager = hcm_pb2.HttpConnectionManager()
            listener.api_listener.api_listener.Unpack(manager)
            if manager.HasField("rds"):
                names.add(manager.rds.route_config_name)
    return tuple(sorted(names))


def assignment_names(resources: Iterable[Any]) -> tuple[str, ...]:
    """ClusterLoadAssignments the EDS clusters of a CDS response name."""
    names: set[str] = set()
    for packed in resources:
        cluster = cluster_pb2.Cluster()
        packed.Unpack(cluster)
        if cluster.type == cluster_pb2.Cluster.EDS:
            names.add(cluster.eds_cluster_config.service_name or cluster.name)
    return tuple(sorted(names))


class NameCache:
    """(type URL, version) -> the names it makes a client subscribe to; decoded once per process."""

    def __init__(self) -> None:
        self._found: dict[tuple[str, str], tuple[str, ...]] = {}

    def names(self, response: discovery_pb2.DiscoveryResponse) -> tuple[str, ...]:
        key = (response.type_url, response.version_info)
        found = self._found.get(key)
        if found is None:
            decode = route_names if response.type_url == LISTENER_TYPE else assignment_names
            found = self._found[key] = decode(response.resources)
        return found


class SimulatedSidecar:
    """One ADS stream subscribed like a sidecar."""

    def __init__(self, target: str, node_id: str, cache: NameCache) -> None:
        self.target = target
        self.node_id = node_id
        self.cache = cache
        self.connected = False
        self.failed = False
        self.acked: dict[str, str] = {}
        self.seen_versions: set[str] = set()
        self.marked: set[str] | None = None
        self.last_new_ack: float | None = None
        self.last_error = ""
        self._names: dict[str, tuple[str, ...]] = {ROUTE_TYPE: (), ENDPOINT_TYPE: ()}
        self._nonces: dict[str, str] = {}

    @property
    def synced(self) -> bool:
        return all(t in self.acked for t in ALL_TYPES)

    def _node(self) -> base_pb2.Node:
        metadata = struct_pb2.Struct()
        metadata.update({"agent": "swarm", "version": "v1", "team": "bench"})
        return base_pb2.Node(
            id=self.node_id,
            cluster="swarm",
            metadata=metadata,
            user_agent_name="agentmesh-bench-swarm",
            user_agent_version="1",
        )

    def mark(self) -> None:
        self.marked = set(self.seen_versions)
        self.last_new_ack = None

    async def run(self, stop: asyncio.Event) -> None:
        for _ in range(RECONNECT_LIMIT):
            try:
                await self._stream(stop)
                return
            except grpc.aio.AioRpcError as exc:
                self.last_error = f"{exc.code().name}: {(exc.details() or '')[:80]}"
                self.connected = False
                if stop.is_set():
                    return
                await asyncio.sleep(1.0)
        self.failed = True

    async def _stream(self, stop: asyncio.Event) -> None:
        async with grpc.aio.insecure_channel(self.target, options=CHANNEL_OPTIONS) as channel:
            call: Any = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources()
            first = discovery_pb2.DiscoveryRequest(type_url=LISTENER_TYPE, node=self._node())
            await call.write(first)
            await call.write(discovery_pb2.DiscoveryRequest(type_url=CLUSTER_TYPE))
            self.connected = True
            reader = asyncio.ensure_future(self._read(call))
            stopping = asyncio.ensure_future(stop.wait())
            await asyncio.wait((reader, stopping), return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            if not reader.done():
                call.cancel()
                reader.cancel()
            else:
                reader.result()

    async def _read(self, call: Any) -> None:
        while True:
            response = await call.read()
            if response is grpc.aio.EOF:  # type: ignore[attr-defined]
                return
            type_url = response.type_url
            self._nonces[type_url] = response.nonce
            subscribe = None
            if type_url in (LISTENER_TYPE, CLUSTER_TYPE):
                wanted = ROUTE_TYPE if type_url == LISTENER_TYPE else ENDPOINT_TYPE
                names = self.cache.names(response)
                if names != self._names[wanted]:
                    self._names[wanted] = names
                    subscribe = wanted
            ack = discovery_pb2.DiscoveryRequest(
                type_url=type_url,
                version_info=response.version_info,
                response_nonce=response.nonce,
                resource_names=self._names.get(type_url, ()),
            )
            await call.write(ack)
            now = time.monotonic()
            self.acked[type_url] = response.version_info
            if self.marked is not None and response.version_info not in self.marked:
                self.last_new_ack = now
            self.seen_versions.add(response.version_info)
            if subscribe is not None:
                await call.write(
                    discovery_pb2.DiscoveryRequest(
                        type_url=subscribe,
                        resource_names=self._names[subscribe],
                        version_info=self.acked.get(subscribe, ""),
                        response_nonce=self._nonces.get(subscribe, ""),
                    )
                )


async def serve(args: argparse.Namespace) -> None:
    cache = NameCache()
    stop = asyncio.Event()
    clients = [SimulatedSidecar(args.target, f"{args.prefix}-{i}~127.0.0.1:{i}", cache) for i in range(args.clients)]
    tasks: list[asyncio.Task[None]] = []

    async def connect() -> None:
        for index, client in enumerate(clients):
            tasks.append(asyncio.ensure_future(client.run(stop)))
            if (index + 1) % args.batch == 0:
                await asyncio.sleep(args.batch / args.connect_rate)

    connecting = asyncio.ensure_future(connect())
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = (await reader.readline()).decode().strip()
        if not line or line == "quit":
            break
        answer: dict[str, Any]
        if line == "status":
            answer = {
                "clients": len(clients),
                "connected": sum(c.connected for c in clients),
                "synced": sum(c.synced for c in clients),
                "failed": sum(c.failed for c in clients),
                "errors": dict(Counter(c.last_error for c in clients if c.last_error).most_common(3)),
            }
        elif line == "mark":
            for client in clients:
                client.mark()
            answer = {"marked": len(clients)}
        elif line == "report":
            answer = {"acked": [c.last_new_ack for c in clients]}
        else:
            answer = {"error": f"unknown command {line!r}"}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()
    stop.set()
    connecting.cancel()
    await asyncio.gather(connecting, return_exceptions=True)
    await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Simulated sidecars on ADS.")
    parser.add_argument("--target", required=True, help="host:port of the control plane")
    parser.add_argument("--clients", type=int, required=True)
    parser.add_argument("--prefix", default="swarm")
    parser.add_argument("--connect-rate", type=float, default=500.0, help="streams opened per second")
    parser.add_argument("--batch", type=int, default=50, help="streams opened together")
    args = parser.parse_args(argv)
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
