"""Small xDS building blocks shared by the translators: type URLs, names, durations, addresses."""

from __future__ import annotations

import ipaddress

from envoy.config.core.v3 import address_pb2, config_source_pb2
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message

_PREFIX = "type.googleapis.com/"
LISTENER_TYPE = _PREFIX + "envoy.config.listener.v3.Listener"
ROUTE_TYPE = _PREFIX + "envoy.config.route.v3.RouteConfiguration"
CLUSTER_TYPE = _PREFIX + "envoy.config.cluster.v3.Cluster"
ENDPOINT_TYPE = _PREFIX + "envoy.config.endpoint.v3.ClusterLoadAssignment"


def agent_cluster_name(agent: str, version: str) -> str:
    return f"agent/{agent}/{version}"


def agent_route_name(agent: str) -> str:
    return f"agent/{agent}"


def service_cluster_name(service: str) -> str:
    return f"service/{service}"


def service_route_name(service: str) -> str:
    return f"service/{service}"


def inbound_listener_name(agent: str) -> str:
    return f"inbound/{agent}"


def pack(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def duration(seconds: float) -> duration_pb2.Duration:
    value = duration_pb2.Duration()
    value.FromNanoseconds(round(seconds * 1e9))
    return value


def ads_source() -> config_source_pb2.ConfigSource:
    """Fetch over the same ADS stream (what Envoy and gRPC clients expect for RDS and EDS)."""
    return config_source_pb2.ConfigSource(
        ads=config_source_pb2.AggregatedConfigSource(), resource_api_version=config_source_pb2.V3
    )


def split_address(address: str) -> tuple[str, int]:
    """'10.0.0.7:15006' or '[::1]:15006' -> (ip, port); 'localhost' becomes 127.0.0.1.

    Raises ValueError for anything else: EDS endpoints must be IP literals for both Envoy and gRPC.
    """
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) <= 65535:
        raise ValueError(f"invalid address {address!r}: expected ip:port")
    host = host.removeprefix("[").removesuffix("]")
    if host == "localhost":
        host = "127.0.0.1"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"invalid address {address!r}: the host must be an IP address") from None
    return host, int(port)


def socket_address(host: str, port: int) -> address_pb2.Address:
    return address_pb2.Address(socket_address=address_pb2.SocketAddress(address=host, port_value=port))
