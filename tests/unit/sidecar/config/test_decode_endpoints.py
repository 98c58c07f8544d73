"""EDS decoding: flattened localities, Envoy's health semantics, weights, addresses, refusals."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from envoy.config.core.v3 import address_pb2, base_pb2, health_check_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2 as ec
from envoy.config.endpoint.v3 import endpoint_pb2
from google.protobuf import wrappers_pb2

from control_plane.translate.endpoints import load_assignment
from control_plane.translate.view import InstanceView
from sidecar.config.decode import DecodeError
from sidecar.config.decode.endpoints import decode_assignment
from sidecar.config.snapshot import ClusterEndpoints, Endpoint


def lb_endpoint(
    host: str, port: int, status: int = health_check_pb2.HEALTHY, weight: int | None = None
) -> ec.LbEndpoint:
    endpoint = ec.LbEndpoint(
        endpoint=ec.Endpoint(
            address=address_pb2.Address(socket_address=address_pb2.SocketAddress(address=host, port_value=port))
        ),
        health_status=status,
    )
    if weight is not None:
        endpoint.load_balancing_weight.value = weight
    return endpoint


def assignment(*endpoints: ec.LbEndpoint, zone: str = "a") -> endpoint_pb2.ClusterLoadAssignment:
    locality = ec.LocalityLbEndpoints(locality=base_pb2.Locality(zone=zone), lb_endpoints=list(endpoints))
    return endpoint_pb2.ClusterLoadAssignment(cluster_name="agent/researcher/v1", endpoints=[locality])


def test_translated_assignment_flattens_localities() -> None:
    instances = [
        InstanceView("127.0.0.1:7001"),
        InstanceView("127.0.0.2:7001", zone="b"),
        InstanceView("127.0.0.3:7001", healthy=False, zone="b"),
    ]
    decoded = decode_assignment(load_assignment("agent/researcher/v1", instances, []))
    assert decoded == ClusterEndpoints(
        "agent/researcher/v1",
        (
            Endpoint("127.0.0.2:7001", healthy=True, weight=1, zone="b"),
            Endpoint("127.0.0.3:7001", healthy=False, weight=1, zone="b"),
            Endpoint("127.0.0.1:7001", healthy=True, weight=1, zone="default"),
        ),
    )


def test_health_status_as_envoy_treats_it() -> None:
    statuses = {
        health_check_pb2.UNKNOWN: True,
        health_check_pb2.HEALTHY: True,
        health_check_pb2.UNHEALTHY: False,
        health_check_pb2.DRAINING: False,
        health_check_pb2.TIMEOUT: False,
        health_check_pb2.DEGRADED: False,
    }
    decoded = decode_assignment(assignment(*(lb_endpoint("10.0.0.1", 7000 + s, s) for s in statuses)))
    assert [e.healthy for e in decoded.endpoints] == list(statuses.values())


def test_weights_and_ipv6() -> None:
    decoded = decode_assignment(assignment(lb_endpoint("::1", 15006, weight=3), lb_endpoint("10.0.0.1", 1)))
    assert decoded.endpoints == (Endpoint("[::1]:15006", True, 3, "a"), Endpoint("10.0.0.1:1", True, 1, "a"))


def test_an_empty_assignment_has_no_endpoints() -> None:
    assert decode_assignment(endpoint_pb2.ClusterLoadAssignment(cluster_name="c")).endpoints == ()


def _changed(
    build: Callable[[endpoint_pb2.ClusterLoadAssignment], object],
) -> Callable[[], endpoint_pb2.ClusterLoadAssignment]:
    def make() -> endpoint_pb2.ClusterLoadAssignment:
        result = assignment(lb_endpoint("10.0.0.1", 7001), lb_endpoint("10.0.0.2", 7001))
        build(result)
        return result

    return make


E1 = "endpoints[0].lb_endpoints[1]"
REFUSALS: list[tuple[str, Callable[[], endpoint_pb2.ClusterLoadAssignment], str]] = [
    (
        "hostname",
        _changed(
            lambda a: setattr(a.endpoints[0].lb_endpoints[1].endpoint.address.socket_address, "address", "researcher")
        ),
        f"{E1}.endpoint.address.socket_address.address 'researcher' is not an IP address",
    ),
    (
        "port 0",
        _changed(lambda a: setattr(a.endpoints[0].lb_endpoints[1].endpoint.address.socket_address, "port_value", 0)),
        f"{E1}.endpoint.address.socket_address.port_value 0 is out of range",
    ),
    (
        "named port",
        _changed(
            lambda a: setattr(a.endpoints[0].lb_endpoints[1].endpoint.address.socket_address, "named_port", "grpc")
        ),
        f"{E1}.endpoint.address.socket_address: a port_value is required (named_port is not supported)",
    ),
    (
        "udp",
        _changed(
            lambda a: setattr(
                a.endpoints[0].lb_endpoints[1].endpoint.address.socket_address,
                "protocol",
                address_pb2.SocketAddress.UDP,
            )
        ),
        f"{E1}.endpoint.address.socket_address: only TCP is supported",
    ),
    (
        "resolver",
        _changed(
            lambda a: setattr(a.endpoints[0].lb_endpoints[1].endpoint.address.socket_address, "resolver_name", "dns")
        ),
        f"{E1}.endpoint.address.socket_address.resolver_name is not supported",
    ),
    (
        "pipe",
        _changed(
            lambda a: (
                a.endpoints[0]
                .lb_endpoints[1]
                .endpoint.address.CopyFrom(address_pb2.Address(pipe=address_pb2.Pipe(path="/s")))
            )
        ),
        f"{E1}.endpoint.address: only socket_address is supported",
    ),
    (
        "endpoint name",
        _changed(lambda a: setattr(a.endpoints[0].lb_endpoints[1], "endpoint_name", "named")),
        f"{E1}: endpoint_name is not supported",
    ),
    (
        "no endpoint",
        _changed(lambda a: a.endpoints[0].lb_endpoints[1].ClearField("endpoint")),
        f"{E1}: no endpoint",
    ),
    (
        "zero weight",
        _changed(
            lambda a: a.endpoints[0].lb_endpoints[1].load_balancing_weight.CopyFrom(wrappers_pb2.UInt32Value(value=0))
        ),
        f"{E1}.load_balancing_weight must be at least 1",
    ),
    (
        "priority",
        _changed(lambda a: setattr(a.endpoints[0], "priority", 1)),
        "endpoints[0]: priority 1 is not supported (failover priorities)",
    ),
    (
        "leds",
        _changed(lambda a: a.endpoints[0].leds_cluster_locality_config.SetInParent()),
        "endpoints[0]: leds_cluster_locality_config is not supported",
    ),
    (
        "drop overloads",
        _changed(lambda a: a.policy.drop_overloads.add(category="throttle")),
        "policy.drop_overloads is not supported",
    ),
    (
        "named endpoints",
        _changed(lambda a: a.named_endpoints["x"].SetInParent()),
        "named_endpoints is not supported",
    ),
]


@pytest.mark.parametrize(("build", "message"), [(b, m) for _, b, m in REFUSALS], ids=[n for n, _, _ in REFUSALS])
def test_refusals_name_the_field(build: Callable[[], endpoint_pb2.ClusterLoadAssignment], message: str) -> None:
    with pytest.raises(DecodeError) as caught:
        decode_assignment(build())
    assert str(caught.value) == message
