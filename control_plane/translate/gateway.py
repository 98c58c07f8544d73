"""The mesh gateway: what an Envoy at the edge of the mesh needs to route gRPC calls into it (pure).

`translate_gateway(policies, mesh, port=...)` returns the mesh's clusters and
endpoints unchanged (the very resources `translate` builds) plus:

- Listener `gateway` on `0.0.0.0:<port>`: one HttpConnectionManager (codec
  AUTO, so HTTP/2 for gRPC and HTTP/1.1 for anything else) with RDS
  `gateway` over ADS and the filters `agentmesh.access.deny`,
  `agentmesh.access.allow` (Envoy RBAC with no rules: pass-through unless a
  route overrides them), then the router;
- RouteConfiguration `gateway`: the virtual host of every agent (domains
  `<agent>`, `<agent>:*`) and of every service, taken from the agent and
  service route configurations, so splits, pins, timeouts and retries are the
  ones sidecars and proxyless clients get. Each agent's virtual host overrides
  the two RBAC filters (`RBACPerRoute`) with that agent's AccessPolicy, built
  by the same builder as the agent's inbound listener: the gateway refuses
  what the agent's sidecar would refuse, before the call enters the mesh.

A caller picks the destination with `:authority` (`grpc.default_authority`
in grpcio, `-authority` in grpcurl). Service virtual hosts carry no access
override: the implementation a call lands on enforces its own AccessPolicy in
its sidecar.

TLS (tls.py): clusters reached over mutual TLS carry the same expected peer
as in the mesh translation, but Envoy takes its certificate and roots from
SDS (secrets `default` and `ROOTCA` from its bootstrap's `sds-grpc` cluster)
instead of gRPC certificate providers. With `downstream_mtls` the listener
also requires a client certificate of the trust domain; the caller's SPIFFE
ID is then what the RBAC filters see as its principal. Without it the
listener is plaintext and callers are anonymous to RBAC.

Envoy subscribes to every listener and cluster (wildcard), so gateways get a
snapshot of their own: nodes whose id starts with GATEWAY_NODE_PREFIX
(`gateway~edge-1`) receive this translation instead of the sidecar-facing one
(control_plane.publisher, `SnapshotCache.set_group`).
"""

from __future__ import annotations

from collections.abc import Iterable
from types import MappingProxyType

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2, protocol_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as rbac_filter
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm

from agentmesh.identity.spiffe import DEFAULT_TRUST_DOMAIN
from control_plane.policy.model import Policy
from control_plane.translate._xds import ads_source, agent_route_name, pack, service_route_name, socket_address
from control_plane.translate.listeners import HCM_FILTER, ROUTER_FILTER
from control_plane.translate.rbac import ALLOW_FILTER, DENY_FILTER, AgentAccess, rbac_filters
from control_plane.translate.snapshot import Resources, _Policies, translate
from control_plane.translate.tls import downstream_tls_sds, upstream_tls_sds
from control_plane.translate.view import MeshView

# Node ids starting with this get the gateway snapshot, e.g. `gateway~edge-1`.
GATEWAY_NODE_PREFIX = "gateway~"
GATEWAY_LISTENER = "gateway"
GATEWAY_ROUTE = "gateway"
DEFAULT_GATEWAY_PORT = 15443


def _pass_through(name: str) -> hcm.HttpFilter:
    """An RBAC filter without rules: Envoy enforces nothing until a route's RBACPerRoute says otherwise."""
    return hcm.HttpFilter(name=name, typed_config=pack(rbac_filter.RBAC()))


def gateway_listener(port: int, *, mtls_trust_domain: str | None = None) -> listener_pb2.Listener:
    """`gateway` on 0.0.0.0:<port>, routing with RouteConfiguration `gateway` (RDS over ADS).

    With `mtls_trust_domain`, callers must present a certificate of that trust domain.
    """
    manager = hcm.HttpConnectionManager(
        stat_prefix=GATEWAY_LISTENER,
        codec_type=hcm.HttpConnectionManager.AUTO,
        http2_protocol_options=protocol_pb2.Http2ProtocolOptions(),
        rds=hcm.Rds(config_source=ads_source(), route_config_name=GATEWAY_ROUTE),
        http_filters=[
            _pass_through(DENY_FILTER),
            _pass_through(ALLOW_FILTER),
            hcm.HttpFilter(name=ROUTER_FILTER, typed_config=pack(router_pb2.Router())),
        ],
    )
    chain = listener_components_pb2.FilterChain(
        filters=[listener_components_pb2.Filter(name=HCM_FILTER, typed_config=pack(manager))]
    )
    if mtls_trust_domain is not None:
        chain.transport_socket.CopyFrom(downstream_tls_sds(mtls_trust_domain))
    return listener_pb2.Listener(
        name=GATEWAY_LISTENER,
        address=socket_address("0.0.0.0", port),
        traffic_direction=base_pb2.INBOUND,
        filter_chains=[chain],
    )


def access_overrides(
    access: AgentAccess | None, *, trust_domain: str = DEFAULT_TRUST_DOMAIN
) -> dict[str, rbac_filter.RBACPerRoute]:
    """filter name -> RBACPerRoute carrying the agent's rules; empty when the agent accepts every caller."""
    overrides = {}
    for http_filter in rbac_filters(access, trust_domain=trust_domain):
        rules = rbac_filter.RBAC()
        http_filter.typed_config.Unpack(rules)
        overrides[http_filter.name] = rbac_filter.RBACPerRoute(rbac=rules)
    return overrides


def _host(route_config: route_pb2.RouteConfiguration) -> rc.VirtualHost:
    (host,) = route_config.virtual_hosts
    return host


def translate_gateway(
    policies: Iterable[Policy],
    mesh: MeshView,
    *,
    port: int,
    trust_domain: str = DEFAULT_TRUST_DOMAIN,
    downstream_mtls: bool = False,
    mesh_resources: Resources | None = None,
) -> Resources:
    """The gateway's resources for one policy set over the registered agents.

    `mesh_resources` is `translate(policies, mesh, trust_domain=trust_domain)`
    when the caller already has it (the publisher does); otherwise it is
    computed here.
    """
    policies = tuple(policies)
    base = mesh_resources if mesh_resources is not None else translate(policies, mesh, trust_domain=trust_domain)
    notes: list[str] = []
    # Notes about the policy set itself are already in base.notes.
    access = _Policies(policies, [])
    hosts: list[rc.VirtualHost] = []
    taken: dict[str, str] = {}

    def add(host: rc.VirtualHost) -> None:
        clash = next((domain for domain in host.domains if domain in taken), None)
        if clash is not None:
            # Envoy refuses a route configuration in which two virtual hosts share a domain.
            notes.append(f"gateway: virtual host {host.name} left out: domain {clash!r} is {taken[clash]}'s")
            return
        taken.update((domain, host.name) for domain in host.domains)
        hosts.append(host)

    for agent in mesh.agents.values():
        host = rc.VirtualHost()
        host.CopyFrom(_host(base.routes[agent_route_name(agent.name)]))
        for name, override in access_overrides(access.access(agent.name), trust_domain=trust_domain).items():
            host.typed_per_filter_config[name].CopyFrom(pack(override))
        add(host)
    for service in mesh.services:
        add(_host(base.routes[service_route_name(service)]))

    clusters = dict(base.clusters)
    for name, peer in base.peers.items():
        cluster = cluster_pb2.Cluster()
        cluster.CopyFrom(base.clusters[name])
        cluster.transport_socket.CopyFrom(upstream_tls_sds(peer))
        clusters[name] = cluster

    listener = gateway_listener(port, mtls_trust_domain=trust_domain if downstream_mtls else None)
    return Resources(
        listeners=MappingProxyType({GATEWAY_LISTENER: listener}),
        routes=MappingProxyType({GATEWAY_ROUTE: route_pb2.RouteConfiguration(name=GATEWAY_ROUTE, virtual_hosts=hosts)}),
        clusters=MappingProxyType(clusters),
        endpoints=base.endpoints,
        notes=(*base.notes, *notes),
        peers=base.peers,
    )
