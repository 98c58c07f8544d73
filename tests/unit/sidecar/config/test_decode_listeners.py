"""LDS decoding: proxyless api listeners, this agent's inbound listener (RBAC, config headers), refusals."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from envoy.config.core.v3 import base_pb2, config_source_pb2
from envoy.config.listener.v3 import api_listener_pb2, listener_components_pb2, listener_pb2
from envoy.config.rbac.v3 import rbac_pb2 as rbac_config
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as rbac_filter
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm
from google.protobuf import any_pb2, struct_pb2, wrappers_pb2
from google.protobuf.message import Message

from control_plane.policy.model import AccessPolicy
from control_plane.translate.listeners import api_listener, inbound_listener
from control_plane.translate.rbac import AgentAccess
from control_plane.translate.view import AgentView, InstanceView
from sidecar.config.decode import DecodeError
from sidecar.config.decode.listeners import ROUTER_TYPE, decode_listener
from sidecar.config.snapshot import ApiListener, InboundConfig
from sidecar.filters.rbac import RbacConfig

RESEARCHER = AgentView("researcher", versions={"v1": (InstanceView("127.0.0.1:7001"),)})
ACCESS = AgentAccess(
    own=AccessPolicy.model_validate(
        {
            "metadata": {"name": "researcher-access"},
            "spec": {
                "target": "researcher",
                "default_action": "deny",
                "rules": [
                    {"name": "planner-may-search", "action": "allow", "from": {"agents": ["planner"]}},
                    {"name": "writer-denied", "action": "deny", "from": {"agents": ["writer"]}},
                ],
            },
        }
    )
)
WRITER = "spiffe://agentmesh.local/team/writing/agent/writer"


def pack(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def manager_of(listener: listener_pb2.Listener) -> hcm.HttpConnectionManager:
    manager = hcm.HttpConnectionManager()
    if listener.HasField("api_listener"):
        listener.api_listener.api_listener.Unpack(manager)
    else:
        listener.filter_chains[0].filters[0].typed_config.Unpack(manager)
    return manager


def with_manager(
    listener: listener_pb2.Listener, change: Callable[[hcm.HttpConnectionManager], object]
) -> listener_pb2.Listener:
    manager = manager_of(listener)
    change(manager)
    if listener.HasField("api_listener"):
        listener.api_listener.api_listener.CopyFrom(pack(manager))
    else:
        listener.filter_chains[0].filters[0].typed_config.CopyFrom(pack(manager))
    return listener


def filter_of(message: Message, name: str = "f", **options: Any) -> hcm.HttpFilter:
    return hcm.HttpFilter(name=name, typed_config=pack(message), **options)


def test_api_listener() -> None:
    decoded = decode_listener(api_listener("researcher", "agent/researcher"), agent="planner")
    assert decoded == ApiListener(name="researcher", route_config="agent/researcher")


def test_optional_and_disabled_filters_are_skipped_on_api_listeners() -> None:
    def add(manager: hcm.HttpConnectionManager) -> None:
        router = manager.http_filters.pop()
        manager.http_filters.extend(
            [filter_of(fault_pb2.HTTPFault(), is_optional=True), filter_of(fault_pb2.HTTPFault(), disabled=True)]
        )
        manager.http_filters.append(router)

    assert decode_listener(with_manager(api_listener("researcher", "r"), add), agent="planner") == ApiListener(
        "researcher", "r"
    )


def test_inbound_listener_of_this_agent() -> None:
    listener = inbound_listener(RESEARCHER, ACCESS, {"model": "small-model", "max-sources": "5"})
    decoded = decode_listener(listener, agent="researcher")
    assert isinstance(decoded, InboundConfig)
    assert dict(decoded.request_headers) == {
        "x-agentmesh-config-max-sources": "5",
        "x-agentmesh-config-model": "small-model",
    }
    assert [type(c) for c in decoded.rbac] == [RbacConfig, RbacConfig]
    deny, allow = decoded.rbac
    assert isinstance(deny, RbacConfig) and isinstance(allow, RbacConfig)
    assert (deny.name, deny.action) == ("agentmesh.access.deny", "DENY")
    assert (allow.name, allow.action) == ("agentmesh.access.allow", "ALLOW")
    assert deny.evaluate("/research.v1.Researcher/Search", {}, WRITER).allowed is False
    assert deny.evaluate("/research.v1.Researcher/Search", {"x-agentmesh-source-agent": "writer"}).allowed is True


def test_inbound_listener_without_policies() -> None:
    decoded = decode_listener(inbound_listener(RESEARCHER, None, {}), agent="researcher")
    assert decoded == InboundConfig()


def test_listeners_for_others_are_not_read() -> None:
    broken = inbound_listener(RESEARCHER, ACCESS, {})
    broken.filter_chains.add()  # would be refused if it were ours
    assert decode_listener(broken, agent="planner") is None
    gateway = listener_pb2.Listener(name="gateway", filter_chains=[listener_components_pb2.FilterChain()])
    assert decode_listener(gateway, agent="planner") is None


def test_config_header_forms() -> None:
    def headers(manager: hcm.HttpConnectionManager) -> None:
        config = manager.route_config
        config.request_headers_to_add.append(
            base_pb2.HeaderValueOption(
                header=base_pb2.HeaderValue(key="X-Level", value="config"), append=wrappers_pb2.BoolValue(value=False)
            )
        )
        config.virtual_hosts[0].request_headers_to_add.append(
            base_pb2.HeaderValueOption(
                header=base_pb2.HeaderValue(key="x-level", raw_value=b"host"),
                append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
            )
        )

    decoded = decode_listener(with_manager(inbound_listener(RESEARCHER, None, {}), headers), agent="researcher")
    assert isinstance(decoded, InboundConfig)
    assert dict(decoded.request_headers) == {"x-level": "host"}  # the virtual host's is more specific


def _api(change: Callable[[hcm.HttpConnectionManager], object]) -> Callable[[], listener_pb2.Listener]:
    return lambda: with_manager(api_listener("researcher", "agent/researcher"), change)


def _inbound(change: Callable[[hcm.HttpConnectionManager], object]) -> Callable[[], listener_pb2.Listener]:
    return lambda: with_manager(inbound_listener(RESEARCHER, ACCESS, {"model": "m"}), change)


def _insert(message: Message, **options: Any) -> Callable[[hcm.HttpConnectionManager], None]:
    def change(manager: hcm.HttpConnectionManager) -> None:
        manager.http_filters.insert(0, filter_of(message, "extra", **options))

    return change


def _option(**fields: Any) -> Callable[[hcm.HttpConnectionManager], None]:
    def change(manager: hcm.HttpConnectionManager) -> None:
        manager.route_config.virtual_hosts[0].request_headers_to_add.append(base_pb2.HeaderValueOption(**fields))

    return change


def _bad_rbac(manager: hcm.HttpConnectionManager) -> None:
    rules = rbac_config.RBAC(
        policies={"p": rbac_config.Policy(permissions=[rbac_config.Permission(any=True)], principals=[])}
    )
    manager.http_filters.insert(0, filter_of(rbac_filter.RBAC(rules=rules), "bad-rbac"))


def _chain(change: Callable[[listener_pb2.Listener], object]) -> listener_pb2.Listener:
    listener = inbound_listener(RESEARCHER, None, {})
    change(listener)
    return listener


FAULT_TYPE = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"
RBAC_TYPE = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
OVERWRITE_ONLY = "only append_action OVERWRITE_IF_EXISTS_OR_ADD is supported"
API = "api_listener.api_listener"
IN = "filter_chains[0].filters[0].typed_config"
REFUSALS: list[tuple[str, str, Callable[[], listener_pb2.Listener], str]] = [
    (
        "api listener not hcm",
        "planner",
        lambda: listener_pb2.Listener(
            name="x", api_listener=api_listener_pb2.ApiListener(api_listener=pack(struct_pb2.Struct()))
        ),
        f"{API}: type.googleapis.com/google.protobuf.Struct is not supported (expected HttpConnectionManager)",
    ),
    (
        "inline routes on an api listener",
        "planner",
        _api(lambda m: m.route_config.CopyFrom(route_pb2.RouteConfiguration(name="inline"))),
        f"{API}: route_config is not supported (expected rds)",
    ),
    (
        "rds from elsewhere",
        "planner",
        _api(lambda m: m.rds.config_source.CopyFrom(config_source_pb2.ConfigSource(path="/routes.yaml"))),
        f"{API}.rds.config_source is path: routes must come over ADS",
    ),
    (
        "empty rds name",
        "planner",
        _api(lambda m: setattr(m.rds, "route_config_name", "")),
        f"{API}.rds.route_config_name is empty",
    ),
    (
        "no router",
        "planner",
        _api(lambda m: m.http_filters.pop()),
        f"{API}.http_filters: the last filter must be the router (envoy.filters.http.router)",
    ),
    (
        "unknown filter on an api listener",
        "planner",
        _api(_insert(fault_pb2.HTTPFault())),
        f"{API}.http_filters[0] (extra): {FAULT_TYPE} is not supported",
    ),
    (
        "rbac on an api listener",
        "planner",
        _api(_insert(rbac_filter.RBAC())),
        f"{API}.http_filters[0] (extra): {RBAC_TYPE} is not supported",
    ),
    (
        "router twice",
        "planner",
        _api(
            lambda m: m.http_filters.insert(
                0, hcm.HttpFilter(name="r0", typed_config=any_pb2.Any(type_url=ROUTER_TYPE))
            )
        ),
        f"{API}.http_filters[0] (r0): the router must be the last filter",
    ),
    (
        "filter config discovery",
        "planner",
        _api(
            lambda m: m.http_filters.insert(
                0, hcm.HttpFilter(name="ecds", config_discovery=config_source_pb2.ExtensionConfigSource())
            )
        ),
        f"{API}.http_filters[0] (ecds): config_discovery is not supported",
    ),
    (
        "two filter chains",
        "researcher",
        lambda: _chain(lambda listener: listener.filter_chains.add()),
        "filter_chains: 2 filter chains; the sidecar supports exactly one",
    ),
    (
        "two network filters",
        "researcher",
        lambda: _chain(lambda listener: listener.filter_chains[0].filters.add(name="tcp")),
        "filter_chains[0].filters: expected one HttpConnectionManager, got 2 filters",
    ),
    (
        "inbound rds",
        "researcher",
        _inbound(lambda m: m.rds.CopyFrom(hcm.Rds(route_config_name="r"))),
        f"{IN}: the inbound route configuration must be inline (route_config)",
    ),
    (
        "unsupported rbac",
        "researcher",
        _inbound(_bad_rbac),
        f"{IN}.http_filters[0] (bad-rbac): rules.",  # then the RBAC filter's own message
    ),
    (
        "two virtual hosts",
        "researcher",
        _inbound(lambda m: m.route_config.virtual_hosts.add(name="second")),
        f"{IN}.route_config.virtual_hosts: expected one virtual host, got 2",
    ),
    (
        "header removal",
        "researcher",
        _inbound(lambda m: m.route_config.virtual_hosts[0].request_headers_to_remove.append("x")),
        f"{IN}.route_config.virtual_hosts[0].request_headers_to_remove is not supported",
    ),
    (
        "appending header",
        "researcher",
        _inbound(_option(header=base_pb2.HeaderValue(key="x", value="1"))),
        f"{IN}.route_config.virtual_hosts[0].request_headers_to_add[1]: {OVERWRITE_ONLY}",
    ),
    (
        "append true",
        "researcher",
        _inbound(_option(header=base_pb2.HeaderValue(key="x", value="1"), append=wrappers_pb2.BoolValue(value=True))),
        f"{IN}.route_config.virtual_hosts[0].request_headers_to_add[1]: {OVERWRITE_ONLY}",
    ),
    (
        "pseudo header",
        "researcher",
        _inbound(
            _option(
                header=base_pb2.HeaderValue(key=":path", value="/"),
                append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
            )
        ),
        f"{IN}.route_config.virtual_hosts[0].request_headers_to_add[1]: header ':path' cannot be set",
    ),
    (
        "raw value not utf-8",
        "researcher",
        _inbound(
            _option(
                header=base_pb2.HeaderValue(key="x", raw_value=b"\xff"),
                append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
            )
        ),
        f"{IN}.route_config.virtual_hosts[0].request_headers_to_add[1]: raw_value is not UTF-8",
    ),
]


@pytest.mark.parametrize(
    ("agent", "build", "message"), [(a, b, m) for _, a, b, m in REFUSALS], ids=[n for n, _, _, _ in REFUSALS]
)
def test_refusals_name_the_field(agent: str, build: Callable[[], listener_pb2.Listener], message: str) -> None:
    with pytest.raises(DecodeError) as caught:
        decode_listener(build(), agent=agent)
    assert str(caught.value).startswith(message)
