"""A bare ADS client for tests: sends exactly the DiscoveryRequests a test asks for."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import grpc
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import struct_pb2
from google.rpc import status_pb2

from control_plane.xds.snapshot import CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE

ALL_TYPES = (LISTENER_TYPE, ROUTE_TYPE, CLUSTER_TYPE, ENDPOINT_TYPE)


class AdsClient:
    """A bare xDS consumer: sends exactly the requests a test asks for."""

    def __init__(self, port: int, node_id: str) -> None:
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        self.call: Any = ads_pb2_grpc.AggregatedDiscoveryServiceStub(self.channel).StreamAggregatedResources()
        metadata = struct_pb2.Struct()
        metadata.update({"agent": "planner"})
        self.node = base_pb2.Node(
            id=node_id, cluster="planner", metadata=metadata, user_agent_name="test-client", user_agent_version="1.0"
        )
        self.names: dict[str, tuple[str, ...]] = {}
        self._node_sent = False

    async def send(
        self,
        type_url: str,
        *,
        names: Iterable[str] | None = None,
        nonce: str = "",
        version: str = "",
        error: str | None = None,
        with_node: bool = True,
    ) -> None:
        if names is not None:
            self.names[type_url] = tuple(names)
        request = discovery_pb2.DiscoveryRequest(
            type_url=type_url,
            resource_names=self.names.get(type_url, ()),
            response_nonce=nonce,
            version_info=version,
        )
        if with_node and not self._node_sent:
            request.node.CopyFrom(self.node)
            self._node_sent = True
        if error is not None:
            request.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))  # INVALID_ARGUMENT, as gRPC sends
        await self.call.write(request)

    async def subscribe_all(self) -> None:
        for type_url in ALL_TYPES:
            await self.send(type_url)

    async def recv(self) -> Any:
        return await asyncio.wait_for(self.call.read(), 5)

    async def ack(self, response: Any) -> None:
        await self.send(response.type_url, nonce=response.nonce, version=response.version_info)

    async def nack(self, response: Any, message: str, *, accepted_version: str = "") -> None:
        await self.send(response.type_url, nonce=response.nonce, version=accepted_version, error=message)

    async def close(self) -> None:
        self.call.cancel()
        await self.channel.close(None)


_KINDS = {
    CLUSTER_TYPE: cluster_pb2.Cluster,
    ENDPOINT_TYPE: endpoint_pb2.ClusterLoadAssignment,
    LISTENER_TYPE: listener_pb2.Listener,
    ROUTE_TYPE: route_pb2.RouteConfiguration,
}


def names(response: Any) -> list[str]:
    """Names of the resources in a response, in order."""
    found = []
    for packed in response.resources:
        message = _KINDS[packed.type_url]()
        packed.Unpack(message)
        found.append(message.cluster_name if packed.type_url == ENDPOINT_TYPE else message.name)
    return found
