"""EDS: `ClusterLoadAssignment` -> `ClusterEndpoints`, the sidecars serving one cluster.

Localities are flattened (each endpoint keeps its zone). Health follows
Envoy: UNKNOWN and HEALTHY endpoints take traffic; UNHEALTHY, DRAINING,
TIMEOUT and DEGRADED ones do not. An endpoint's weight is its
`load_balancing_weight` (default 1); locality weights only matter to
locality-weighted balancing, which the sidecar does not do (nor does Envoy
unless configured). Addresses are IP literals with a port, as Envoy requires
for EDS; failover priorities, drop overloads and LEDS would change where
calls go and are rejected.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from sidecar.config.decode._proto import DecodeError
from sidecar.config.snapshot import ClusterEndpoints, Endpoint

# config.core.v3.HealthStatus values that take traffic: UNKNOWN (0), HEALTHY (1).
_HEALTHY = frozenset({0, 1})


def decode_assignment(assignment: Any) -> ClusterEndpoints:
    """Decodes an endpoint.v3.ClusterLoadAssignment; raises DecodeError naming the offending field."""
    if len(assignment.policy.drop_overloads):
        raise DecodeError("policy.drop_overloads is not supported")
    if len(assignment.named_endpoints):
        raise DecodeError("named_endpoints is not supported")
    endpoints: list[Endpoint] = []
    for i, locality in enumerate(assignment.endpoints):
        at = f"endpoints[{i}]"
        if locality.priority != 0:
            raise DecodeError(f"{at}: priority {locality.priority} is not supported (failover priorities)")
        if locality.HasField("leds_cluster_locality_config"):
            raise DecodeError(f"{at}: leds_cluster_locality_config is not supported")
        zone = locality.locality.zone
        for j, lb_endpoint in enumerate(locality.lb_endpoints):
            endpoints.append(_endpoint(lb_endpoint, f"{at}.lb_endpoints[{j}]", zone))
    return ClusterEndpoints(cluster=assignment.cluster_name, endpoints=tuple(endpoints))


def _endpoint(lb_endpoint: Any, at: str, zone: str) -> Endpoint:
    if lb_endpoint.WhichOneof("host_identifier") != "endpoint":
        raise DecodeError(
            f"{at}: endpoint_name is not supported" if lb_endpoint.endpoint_name else f"{at}: no endpoint"
        )
    weight = 1
    if lb_endpoint.HasField("load_balancing_weight"):
        weight = lb_endpoint.load_balancing_weight.value
        if weight < 1:
            raise DecodeError(f"{at}.load_balancing_weight must be at least 1")
    return Endpoint(
        address=_address(lb_endpoint.endpoint.address, f"{at}.endpoint.address"),
        healthy=lb_endpoint.health_status in _HEALTHY,
        weight=weight,
        zone=zone,
    )


def _address(address: Any, at: str) -> str:
    """host:port ([host]:port for IPv6) of a socket_address with an IP literal and a port_value."""
    if address.WhichOneof("address") != "socket_address":
        raise DecodeError(f"{at}: only socket_address is supported")
    socket = address.socket_address
    if socket.resolver_name:
        raise DecodeError(f"{at}.socket_address.resolver_name is not supported")
    if socket.protocol != 0:
        raise DecodeError(f"{at}.socket_address: only TCP is supported")
    if socket.WhichOneof("port_specifier") != "port_value":
        raise DecodeError(f"{at}.socket_address: a port_value is required (named_port is not supported)")
    if not 0 < socket.port_value <= 65535:
        raise DecodeError(f"{at}.socket_address.port_value {socket.port_value} is out of range")
    try:
        ip = ipaddress.ip_address(socket.address)
    except ValueError:
        raise DecodeError(f"{at}.socket_address.address {socket.address!r} is not an IP address") from None
    host = f"[{ip}]" if ip.version == 6 else str(ip)
    return f"{host}:{socket.port_value}"
