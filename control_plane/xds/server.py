"""Starts the ADS service on a grpc.aio server: the control plane's xDS port.

Wiring only; the protocol lives in `ads_server.py`. The admin API may share the
server instead by calling `AggregatedDiscoveryService.add_to_server(server)`.
"""

from __future__ import annotations

import grpc
from prometheus_client import CollectorRegistry

from control_plane.xds.ack_tracker import AckTracker
from control_plane.xds.ads_server import AggregatedDiscoveryService
from control_plane.xds.cache import SnapshotCache

DEFAULT_XDS_ADDRESS = "0.0.0.0:18000"

# xDS streams live for hours; consumers (Envoy, gRPC) may send keepalive pings on them.
_SERVER_OPTIONS = (
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
)


async def serve_xds(
    cache: SnapshotCache,
    tracker: AckTracker,
    *,
    address: str = DEFAULT_XDS_ADDRESS,
    registry: CollectorRegistry | None = None,
    service: AggregatedDiscoveryService | None = None,
) -> tuple[grpc.aio.Server, int]:
    """Starts ADS on `address` (port 0 picks one) and returns the started server and its port.

    Pass `service` to keep a handle on the servicer (connected nodes, stats); it
    must serve the same `cache` and `tracker`. Stop with `await server.stop(grace)`.
    """
    if service is None:
        service = AggregatedDiscoveryService(cache, tracker, registry=registry)
    elif service.cache is not cache or service.tracker is not tracker:
        raise ValueError("service must serve the cache and tracker passed to serve_xds")
    server = grpc.aio.server(options=_SERVER_OPTIONS)
    service.add_to_server(server)
    port = server.add_insecure_port(address)
    await server.start()
    return server, port
