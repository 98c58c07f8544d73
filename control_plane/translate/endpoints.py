"""EDS: one ClusterLoadAssignment per cluster, one endpoint per registered instance.

Instances are grouped into localities by zone, each with a
`load_balancing_weight` equal to its endpoint count: gRPC's xDS client drops
localities without a weight, and proportional weights keep zones balanced by
capacity. Health comes from the registry (HEALTHY / UNHEALTHY).
"""

from __future__ import annotations

from collections.abc import Iterable

from envoy.config.core.v3 import base_pb2, health_check_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from google.protobuf import wrappers_pb2

from control_plane.translate._xds import socket_address, split_address
from control_plane.translate.view import DEFAULT_ZONE, InstanceView


def load_assignment(
    cluster: str, instances: Iterable[InstanceView], notes: list[str]
) -> endpoint_pb2.ClusterLoadAssignment:
    """The endpoints of `cluster`; an instance whose address is not ip:port is left out with a note."""
    zones: dict[str, list[endpoint_components_pb2.LbEndpoint]] = {}
    seen: set[tuple[str, int]] = set()
    for instance in sorted(instances, key=lambda i: (i.zone, i.address)):
        try:
            host, port = split_address(instance.address)
        except ValueError as exc:
            notes.append(f"{cluster}: instance left out: {exc}")
            continue
        if (host, port) in seen:
            continue
        seen.add((host, port))
        endpoint = endpoint_components_pb2.LbEndpoint(
            endpoint=endpoint_components_pb2.Endpoint(address=socket_address(host, port)),
            health_status=health_check_pb2.HEALTHY if instance.healthy else health_check_pb2.UNHEALTHY,
        )
        zones.setdefault(instance.zone or DEFAULT_ZONE, []).append(endpoint)
    return endpoint_pb2.ClusterLoadAssignment(
        cluster_name=cluster,
        endpoints=[
            endpoint_components_pb2.LocalityLbEndpoints(
                locality=base_pb2.Locality(zone=zone),
                lb_endpoints=endpoints,
                load_balancing_weight=wrappers_pb2.UInt32Value(value=len(endpoints)),
            )
            for zone, endpoints in sorted(zones.items())
        ],
    )
