"""LDS: proxyless targets (`api_listener`) and each agent's inbound listener.

- `<agent>` and `<package.Service>`: a Listener with an `api_listener`
  (HttpConnectionManager, RDS over ADS, router filter). This is the resource a
  gRPC client with target `xds:///researcher` asks for first, and what our
  sidecar's egress resolves a target with.
- `inbound/<agent>`: the callee side, shaped like a gRPC xDS server listener
  (gRFC A36): one filter chain whose HttpConnectionManager runs the access
  RBAC filters, then the router, over an inline route configuration whose
  single route has a `non_forwarding_action` (the sidecar serves the call
  itself). Its virtual host adds the AgentConfig values as request headers
  (`x-agentmesh-config-<key>`), overwriting any a caller sent.

The inbound listener's address is `0.0.0.0:<port>` with the port the agent's
instances share, or DEFAULT_INBOUND_PORT when they differ; each sidecar binds
the address of its own bootstrap and takes the filter chain from here.
"""

from __future__ import annotations

from collections.abc import Mapping

from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import api_listener_pb2, listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm

from agentmesh.identity.spiffe import DEFAULT_TRUST_DOMAIN
from control_plane.policy.model import CONFIG_HEADER_PREFIX
from control_plane.translate._xds import ads_source, inbound_listener_name, pack, socket_address, split_address
from control_plane.translate.rbac import AgentAccess, rbac_filters
from control_plane.translate.view import AgentView

HCM_FILTER = "envoy.filters.network.http_connection_manager"
ROUTER_FILTER = "envoy.filters.http.router"
DEFAULT_INBOUND_PORT = 15006


def _router() -> hcm.HttpFilter:
    return hcm.HttpFilter(name=ROUTER_FILTER, typed_config=pack(router_pb2.Router()))


def _stat_prefix(name: str) -> str:
    return name.replace("/", "_")


def api_listener(name: str, route_config: str) -> listener_pb2.Listener:
    """A proxyless target `name` whose routes are the RouteConfiguration `route_config` (fetched over ADS)."""
    manager = hcm.HttpConnectionManager(
        stat_prefix=_stat_prefix(name),
        rds=hcm.Rds(config_source=ads_source(), route_config_name=route_config),
        http_filters=[_router()],
    )
    return listener_pb2.Listener(name=name, api_listener=api_listener_pb2.ApiListener(api_listener=pack(manager)))


def inbound_port(agent: AgentView) -> int:
    ports = set()
    for instance in agent.instances:
        try:
            ports.add(split_address(instance.address)[1])
        except ValueError:
            continue
    return ports.pop() if len(ports) == 1 else DEFAULT_INBOUND_PORT


def config_headers(values: Mapping[str, str]) -> list[base_pb2.HeaderValueOption]:
    """AgentConfig values as request headers that replace whatever the caller sent under the same name."""
    return [
        base_pb2.HeaderValueOption(
            header=base_pb2.HeaderValue(key=CONFIG_HEADER_PREFIX + key, value=values[key]),
            append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
        )
        for key in sorted(values)
    ]


def inbound_listener(
    agent: AgentView,
    access: AgentAccess | None,
    config: Mapping[str, str],
    *,
    trust_domain: str = DEFAULT_TRUST_DOMAIN,
) -> listener_pb2.Listener:
    """`inbound/<agent>`: access control and config headers for calls the agent's sidecar receives."""
    name = inbound_listener_name(agent.name)
    host = rc.VirtualHost(
        name=name,
        domains=["*"],
        routes=[
            rc.Route(name="serve", match=rc.RouteMatch(prefix="/"), non_forwarding_action=rc.NonForwardingAction())
        ],
        request_headers_to_add=config_headers(config),
    )
    manager = hcm.HttpConnectionManager(
        stat_prefix=_stat_prefix(name),
        route_config=route_pb2.RouteConfiguration(name=name, virtual_hosts=[host]),
        http_filters=[*rbac_filters(access, trust_domain=trust_domain), _router()],
    )
    return listener_pb2.Listener(
        name=name,
        address=socket_address("0.0.0.0", inbound_port(agent)),
        traffic_direction=base_pb2.INBOUND,
        filter_chains=[
            listener_components_pb2.FilterChain(
                filters=[listener_components_pb2.Filter(name=HCM_FILTER, typed_config=pack(manager))]
            )
        ],
    )
