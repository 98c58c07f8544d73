"""The simulated sidecars' subscriptions: which names an LDS or CDS response makes them ask for."""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import api_listener_pb2, listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2

from bench import ads_swarm


def pack(message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def api_listener(name: str, route: str) -> listener_pb2.Listener:
    manager = hcm_pb2.HttpConnectionManager(rds=hcm_pb2.Rds(route_config_name=route))
    return listener_pb2.Listener(name=name, api_listener=api_listener_pb2.ApiListener(api_listener=pack(manager)))


def test_route_names_come_from_api_listeners_only():
    inbound = listener_pb2.Listener(name="inbound/echo")  # a socket listener with an inline route
    resources = [pack(api_listener("echo", "agent/echo")), pack(api_listener("svc", "service/a.B")), pack(inbound)]
    assert ads_swarm.route_names(resources) == ("agent/echo", "service/a.B")


def test_assignment_names_come_from_eds_clusters():
    eds = cluster_pb2.Cluster(name="agent/echo/v1", type=cluster_pb2.Cluster.EDS)
    named = cluster_pb2.Cluster(name="c", type=cluster_pb2.Cluster.EDS)
    named.eds_cluster_config.service_name = "other"
    static = cluster_pb2.Cluster(name="static", type=cluster_pb2.Cluster.STATIC)
    assert ads_swarm.assignment_names([pack(eds), pack(named), pack(static)]) == ("agent/echo/v1", "other")


def test_names_are_decoded_once_per_type_and_version():
    cache = ads_swarm.NameCache()
    response = discovery_pb2.DiscoveryResponse(
        type_url=ads_swarm.LISTENER_TYPE, version_info="p1-g1", resources=[pack(api_listener("echo", "agent/echo"))]
    )
    assert cache.names(response) == ("agent/echo",)
    response.ClearField("resources")  # same version: the cached names stand
    assert cache.names(response) == ("agent/echo",)
    response.version_info = "p1-g2"
    assert cache.names(response) == ()


def test_a_simulated_sidecar_is_synced_once_every_type_is_acked_and_marks_new_versions():
    client = ads_swarm.SimulatedSidecar("127.0.0.1:1", "n~1", ads_swarm.NameCache())
    assert not client.synced
    client.acked = dict.fromkeys(ads_swarm.ALL_TYPES, "v1")
    client.seen_versions = {"v1"}
    assert client.synced
    client.mark()
    assert client.marked == {"v1"} and client.last_new_ack is None
