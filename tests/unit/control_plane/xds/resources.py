"""Small builders of xDS v3 resources for tests of the serving layer (no translator involved)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, config_source_pb2, health_check_pb2, protocol_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import api_listener_pb2, listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from envoy.type.matcher.v3 import regex_pb2
from google.protobuf import any_pb2, wrappers_pb2
from google.protobuf.message import Message

from control_plane.xds.snapshot import Snapshot

ADS = config_source_pb2.ConfigSource(
    ads=config_source_pb2.AggregatedConfigSource(), resource_api_version=config_source_pb2.V3
)
HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def pack(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def socket(host: str, port: int) -> address_pb2.Address:
    return address_pb2.Address(socket_address=address_pb2.SocketAddress(address=host, port_value=port))


def router_filter() -> hcm_pb2.HttpFilter:
    return hcm_pb2.HttpFilter(name="envoy.filters.http.router", typed_config=pack(router_pb2.Router()))


def http_connection_manager(
    route_name: str, *, http_filters: Sequence[hcm_pb2.HttpFilter] = ()
) -> hcm_pb2.HttpConnectionManager:
    return hcm_pb2.HttpConnectionManager(
        stat_prefix=route_name.replace("/", "_"),
        rds=hcm_pb2.Rds(route_config_name=route_name, config_source=ADS),
        http_filters=[*http_filters, router_filter()],
    )


def api_listener(name: str, route_name: str | None = None) -> listener_pb2.Listener:
    """A proxyless gRPC target: `xds:///<name>`."""
    hcm = http_connection_manager(route_name or name)
    return listener_pb2.Listener(name=name, api_listener=api_listener_pb2.ApiListener(api_listener=pack(hcm)))


def socket_listener(
    name: str, port: int, route_name: str, *, http_filters: Sequence[hcm_pb2.HttpFilter] = ()
) -> listener_pb2.Listener:
    """A listener Envoy binds on 127.0.0.1:`port`, routing through RDS `route_name`."""
    hcm = http_connection_manager(route_name, http_filters=http_filters)
    network_filter = listener_components_pb2.Filter(
        name="envoy.filters.network.http_connection_manager", typed_config=pack(hcm)
    )
    chain = listener_components_pb2.FilterChain(filters=[network_filter])
    return listener_pb2.Listener(name=name, address=socket("127.0.0.1", port), filter_chains=[chain])


def route_configuration(
    name: str,
    weights: Mapping[str, int],
    *,
    regex: str | None = None,
    domains: Sequence[str] = ("*",),
) -> route_pb2.RouteConfiguration:
    """One virtual host, one route: every path (or paths matching `regex`) split over `weights`."""
    match = (
        route_components_pb2.RouteMatch(safe_regex=regex_pb2.RegexMatcher(regex=regex))
        if regex is not None
        else route_components_pb2.RouteMatch(prefix="/")
    )
    split = route_components_pb2.WeightedCluster(
        clusters=[
            route_components_pb2.WeightedCluster.ClusterWeight(name=cluster, weight=wrappers_pb2.UInt32Value(value=w))
            for cluster, w in weights.items()
        ]
    )
    action = (
        route_components_pb2.RouteAction(cluster=next(iter(weights)))
        if len(weights) == 1
        else route_components_pb2.RouteAction(weighted_clusters=split)
    )
    host = route_components_pb2.VirtualHost(
        name=name, domains=list(domains), routes=[route_components_pb2.Route(match=match, route=action)]
    )
    return route_pb2.RouteConfiguration(name=name, virtual_hosts=[host])


def cluster(name: str, *, http2: bool = False) -> cluster_pb2.Cluster:
    """An EDS cluster fed over ADS; `http2` for Envoy upstreams that speak gRPC."""
    result = cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.EDS,
        eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(eds_config=ADS),
        lb_policy=cluster_pb2.Cluster.ROUND_ROBIN,
    )
    if http2:
        options = http_protocol_options_pb2.HttpProtocolOptions(
            explicit_http_config=http_protocol_options_pb2.HttpProtocolOptions.ExplicitHttpConfig(
                http2_protocol_options=protocol_pb2.Http2ProtocolOptions()
            )
        )
        result.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS].CopyFrom(pack(options))
    return result


def assignment(
    name: str, ports: Iterable[int], *, unhealthy: Iterable[int] = (), host: str = "127.0.0.1"
) -> endpoint_pb2.ClusterLoadAssignment:
    """Endpoints on `host`; gRPC needs a locality with a weight or it reports "contains no localities"."""
    down = set(unhealthy)
    endpoints = [
        endpoint_components_pb2.LbEndpoint(
            endpoint=endpoint_components_pb2.Endpoint(address=socket(host, port)),
            health_status=health_check_pb2.UNHEALTHY if port in down else health_check_pb2.HEALTHY,
        )
        for port in ports
    ]
    locality = endpoint_components_pb2.LocalityLbEndpoints(
        lb_endpoints=endpoints,
        locality=base_pb2.Locality(zone="test"),
        load_balancing_weight=wrappers_pb2.UInt32Value(value=1),
    )
    return endpoint_pb2.ClusterLoadAssignment(cluster_name=name, endpoints=[locality])


def agent_snapshot(
    version: str,
    *,
    agent: str = "researcher",
    endpoints: Mapping[str, Sequence[int]],
    weights: Mapping[str, int] | None = None,
    unhealthy: Iterable[int] = (),
    regex: str | None = None,
) -> Snapshot:
    """A proxyless snapshot for one agent: api_listener `agent`, route `agent`, one cluster per version."""
    clusters = {f"agent/{agent}/{v}": ports for v, ports in endpoints.items()}
    split = {f"agent/{agent}/{v}": w for v, w in (weights or dict.fromkeys(endpoints, 1)).items()}
    resources: list[Message] = [api_listener(agent), route_configuration(agent, split, regex=regex)]
    for name, ports in clusters.items():
        resources += [cluster(name), assignment(name, ports, unhealthy=unhealthy)]
    return Snapshot.from_resources(version, resources)
