"""LDS: proxyless targets (`api_listener`) and this agent's inbound listener `inbound/<agent>`.

- A Listener with an `api_listener` holding an HttpConnectionManager that
  takes its routes over RDS (ADS) becomes an `ApiListener`: the target name
  and the RouteConfiguration it routes by. Its HTTP filters must end with the
  router; any other filter not marked `is_optional` would act on the call
  and is rejected, as gRPC's xDS client rejects it.
- `inbound/<agent>` (this agent's) becomes the `InboundConfig`: one filter
  chain with one HttpConnectionManager whose `envoy.extensions.filters.http.rbac.v3.RBAC`
  filters become RBAC engines in filter order (the RBAC filter,
  sidecar/filters/rbac.py, builds them) and whose inline route configuration's
  `request_headers_to_add` (overwrite mode) become the AgentConfig headers.

Other listeners (other agents' inbound listeners, listeners meant for an Envoy
gateway) are not for this sidecar: `decode_listener` returns None without
reading them, so one agent's broken access policy never freezes the config of
every other sidecar.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

from envoy.extensions.filters.http.rbac.v3 import rbac_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from google.protobuf.message import DecodeError as ProtoDecodeError

from sidecar.config.decode._proto import DecodeError
from sidecar.config.snapshot import ApiListener, InboundConfig
from sidecar.filters.rbac import RbacConfig

_PREFIX = "type.googleapis.com/"
HCM_TYPE = _PREFIX + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
RBAC_TYPE = _PREFIX + "envoy.extensions.filters.http.rbac.v3.RBAC"
ROUTER_TYPE = _PREFIX + "envoy.extensions.filters.http.router.v3.Router"
INBOUND_PREFIX = "inbound/"
# config.core.v3.HeaderValueOption.HeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD
_OVERWRITE = 2


def inbound_listener_name(agent: str) -> str:
    return INBOUND_PREFIX + agent


def decode_listener(listener: Any, *, agent: str) -> ApiListener | InboundConfig | None:
    """Decodes a listener.v3.Listener for the sidecar of `agent`; None when it is not for this sidecar."""
    if listener.HasField("api_listener"):
        return _api_listener(listener)
    if listener.name == inbound_listener_name(agent):
        return _inbound(listener)
    return None


def _manager(config: Any, at: str) -> Any:
    if config.type_url != HCM_TYPE:
        raise DecodeError(
            f"{at}: {config.type_url or 'an empty config'} is not supported (expected HttpConnectionManager)"
        )
    manager = hcm_pb2.HttpConnectionManager()
    try:
        config.Unpack(manager)
    except ProtoDecodeError as exc:
        raise DecodeError(f"{at}: cannot decode HttpConnectionManager: {exc}") from None
    return manager


def _api_listener(listener: Any) -> ApiListener:
    at = "api_listener.api_listener"
    manager = _manager(listener.api_listener.api_listener, at)
    kind = manager.WhichOneof("route_specifier")
    if kind != "rds":
        raise DecodeError(f"{at}: {kind or 'no route specifier'} is not supported (expected rds)")
    source = manager.rds.config_source.WhichOneof("config_source_specifier")
    if source not in ("ads", "self"):
        raise DecodeError(f"{at}.rds.config_source is {source or 'unset'}: routes must come over ADS")
    if not manager.rds.route_config_name:
        raise DecodeError(f"{at}.rds.route_config_name is empty")
    _filters(manager.http_filters, f"{at}.http_filters", rbac=None)
    return ApiListener(name=listener.name, route_config=manager.rds.route_config_name)


def _inbound(listener: Any) -> InboundConfig:
    chains = [(f"filter_chains[{i}]", chain) for i, chain in enumerate(listener.filter_chains)]
    if listener.HasField("default_filter_chain"):
        chains.append(("default_filter_chain", listener.default_filter_chain))
    if len(chains) != 1:
        raise DecodeError(f"filter_chains: {len(chains)} filter chains; the sidecar supports exactly one")
    at, chain = chains[0]
    if len(chain.filters) != 1:
        raise DecodeError(f"{at}.filters: expected one HttpConnectionManager, got {len(chain.filters)} filters")
    at = f"{at}.filters[0].typed_config"
    manager = _manager(chain.filters[0].typed_config, at)
    if manager.WhichOneof("route_specifier") != "route_config":
        raise DecodeError(f"{at}: the inbound route configuration must be inline (route_config)")
    rbac: list[object] = []
    _filters(manager.http_filters, f"{at}.http_filters", rbac=rbac)
    headers = _request_headers(manager.route_config, f"{at}.route_config")
    return InboundConfig(rbac=tuple(rbac), request_headers=MappingProxyType(headers))


def _filters(filters: Any, at: str, *, rbac: list[object] | None) -> None:
    """Checks an HTTP filter chain; appends RBAC engines to `rbac` when the chain may hold RBAC filters."""
    if not filters or filters[-1].typed_config.type_url != ROUTER_TYPE:
        raise DecodeError(f"{at}: the last filter must be the router (envoy.filters.http.router)")
    for i, http_filter in enumerate(filters[:-1]):
        where = f"{at}[{i}] ({http_filter.name})"
        if http_filter.disabled:
            continue  # Envoy: a disabled filter only runs where a route enables it; the sidecar has no such routes.
        if http_filter.HasField("config_discovery"):
            raise DecodeError(f"{where}: config_discovery is not supported")
        type_url = http_filter.typed_config.type_url
        if type_url == RBAC_TYPE and rbac is not None:
            rbac.append(_rbac(http_filter.typed_config, where, http_filter.name))
        elif type_url == ROUTER_TYPE:
            raise DecodeError(f"{where}: the router must be the last filter")
        elif not http_filter.is_optional:
            raise DecodeError(f"{where}: {type_url or 'a filter without typed_config'} is not supported")


def _rbac(config: Any, at: str, name: str) -> RbacConfig:
    message = rbac_pb2.RBAC()
    try:
        config.Unpack(message)
    except ProtoDecodeError as exc:
        raise DecodeError(f"{at}: cannot decode RBAC: {exc}") from None
    try:
        return RbacConfig.from_proto(message, name=name)
    except ValueError as exc:
        raise DecodeError(f"{at}: {exc}") from None


def _request_headers(route_config: Any, at: str) -> dict[str, str]:
    """AgentConfig headers: request_headers_to_add of the route configuration, then of its one virtual host."""
    if len(route_config.virtual_hosts) != 1:
        raise DecodeError(f"{at}.virtual_hosts: expected one virtual host, got {len(route_config.virtual_hosts)}")
    host = route_config.virtual_hosts[0]
    headers: dict[str, str] = {}
    for where, message in ((at, route_config), (f"{at}.virtual_hosts[0]", host)):
        if len(message.request_headers_to_remove):
            raise DecodeError(f"{where}.request_headers_to_remove is not supported")
        for i, option in enumerate(message.request_headers_to_add):
            key, value = _header_option(option, f"{where}.request_headers_to_add[{i}]")
            headers[key] = value
    return headers


def _header_option(option: Any, at: str) -> tuple[str, str]:
    # The deprecated `append`, when set, wins over append_action (Envoy): false means overwrite-or-add.
    overwrite = not option.append.value if option.HasField("append") else option.append_action == _OVERWRITE
    if not overwrite:
        raise DecodeError(f"{at}: only append_action OVERWRITE_IF_EXISTS_OR_ADD is supported")
    key = option.header.key.lower()
    if not key or key.startswith(":") or key == "host":
        raise DecodeError(f"{at}: header {option.header.key!r} cannot be set")
    value = option.header.value
    if option.header.raw_value:
        try:
            value = option.header.raw_value.decode()
        except UnicodeDecodeError:
            raise DecodeError(f"{at}: raw_value is not UTF-8") from None
    return key, value
