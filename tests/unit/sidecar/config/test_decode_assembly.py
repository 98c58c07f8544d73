"""decode_resource / decode_all / assemble over a realistic translation of examples/policies."""

from __future__ import annotations

import pytest
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from google.protobuf import any_pb2
from google.protobuf.message import Message

from control_plane.translate import Resources, translate
from sidecar.config.decode import (
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    LISTENER_TYPE,
    ROUTE_TYPE,
    TYPE_URLS,
    DecodeError,
    assemble,
    decode_all,
    decode_resource,
    type_label,
)
from sidecar.config.decode.routes import decode_route_configuration
from sidecar.config.snapshot import ApiListener, InboundConfig
from tests.unit.control_plane.translate.meshes import example_mesh, example_policies


def pack(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


@pytest.fixture(scope="module")
def resources() -> Resources:
    return translate(example_policies(), example_mesh())


def packed(resources: Resources, type_url: str) -> list[any_pb2.Any]:
    return [pack(m) for m in resources[type_url].values()]


def with_redirect(config: route_pb2.RouteConfiguration, index: int) -> route_pb2.RouteConfiguration:
    broken = route_pb2.RouteConfiguration()
    broken.CopyFrom(config)
    broken.virtual_hosts[0].routes[index].redirect.CopyFrom(rc.RedirectAction(path_redirect="/elsewhere"))
    return broken


def test_type_labels() -> None:
    assert [type_label(t) for t in TYPE_URLS] == ["cds", "eds", "lds", "rds"]
    assert type_label("type.googleapis.com/other") == "other"


def test_errors_name_the_resource(resources: Resources) -> None:
    broken = with_redirect(resources.routes["agent/researcher"], 3)
    with pytest.raises(DecodeError) as caught:
        decode_resource(pack(broken), type_url=ROUTE_TYPE, agent="planner")
    assert (
        str(caught.value)
        == 'RouteConfiguration "agent/researcher": virtual_hosts[0].routes[3]: redirect is not supported'
    )


def test_resource_level_refusals() -> None:
    route = pack(route_pb2.RouteConfiguration(name="r"))
    with pytest.raises(
        DecodeError,
        match=r"^a type.googleapis.com/envoy.config.route.v3.RouteConfiguration resource in a Cluster response$",
    ):
        decode_resource(route, type_url=CLUSTER_TYPE, agent="a")
    with pytest.raises(DecodeError, match=r"^a untyped resource in a Cluster response$"):
        decode_resource(any_pb2.Any(), type_url=CLUSTER_TYPE, agent="a")
    garbage = any_pb2.Any(type_url=ROUTE_TYPE, value=b"\xff\xff\xff")
    with pytest.raises(DecodeError, match=r"^RouteConfiguration: cannot parse the resource: "):
        decode_resource(garbage, type_url=ROUTE_TYPE, agent="a")
    with pytest.raises(DecodeError, match=r"^RouteConfiguration without a name$"):
        decode_resource(pack(route_pb2.RouteConfiguration()), type_url=ROUTE_TYPE, agent="a")
    with pytest.raises(DecodeError, match=r"^resource type type\.googleapis\.com/x\.Secret is not supported$"):
        decode_resource(route, type_url="type.googleapis.com/x.Secret", agent="a")


def test_decode_all_is_all_or_nothing_and_lists_problems(resources: Resources) -> None:
    configs = list(resources.routes.values())
    good = [pack(c) for c in configs]
    assert set(decode_all(ROUTE_TYPE, good, agent="planner")) == set(resources.routes)
    bad = [pack(with_redirect(c, 0)) for c in configs]
    with pytest.raises(DecodeError) as caught:
        decode_all(ROUTE_TYPE, [*good[:1], *bad[1:]], agent="planner")
    message = str(caught.value)
    assert message.count("redirect is not supported") == min(len(bad) - 1, 5)
    many = [
        pack(with_redirect(route_pb2.RouteConfiguration(name=f"r{i}", virtual_hosts=configs[0].virtual_hosts), 0))
        for i in range(8)
    ]
    with pytest.raises(DecodeError, match=r"\(and 3 more\)$"):
        decode_all(ROUTE_TYPE, many, agent="planner")
    with pytest.raises(DecodeError, match=r'^duplicate RouteConfiguration "agent/planner"$'):
        decode_all(ROUTE_TYPE, [good[0], good[0]], agent="planner")


def test_unchanged_resources_keep_their_decoded_objects(resources: Resources) -> None:
    first = decode_all(ROUTE_TYPE, packed(resources, ROUTE_TYPE), agent="planner")
    again = decode_all(ROUTE_TYPE, packed(resources, ROUTE_TYPE), agent="planner", previous=first)
    assert all(again[name].value is first[name].value for name in first)
    changed = route_pb2.RouteConfiguration()
    changed.CopyFrom(resources.routes["agent/researcher"])
    changed.virtual_hosts[0].domains.append("alias")
    third = decode_all(ROUTE_TYPE, [pack(changed)], agent="planner", previous=first)
    assert third["agent/researcher"].value is not first["agent/researcher"].value
    assert third["agent/researcher"].value == decode_route_configuration(changed)


def test_assemble_a_whole_snapshot(resources: Resources) -> None:
    decoded = {t: decode_all(t, packed(resources, t), agent="researcher") for t in TYPE_URLS}
    snapshot = assemble(decoded, {t: "v7" for t in TYPE_URLS})
    assert snapshot.listeners["researcher"] == ApiListener("researcher", "agent/researcher")
    assert "inbound/researcher" not in snapshot.listeners
    assert isinstance(snapshot.inbound, InboundConfig)
    assert dict(snapshot.inbound.request_headers)["x-agentmesh-config-model"] == "small-model"
    assert len(snapshot.inbound.rbac) == 2
    assert set(snapshot.clusters) == set(resources.clusters)
    assert set(snapshot.endpoints) == set(resources.endpoints)
    assert snapshot.route_table("researcher") is snapshot.routes["agent/researcher"]
    assert dict(snapshot.versions) == {t: "v7" for t in TYPE_URLS}
    assert set(snapshot.raw[LISTENER_TYPE]) == set(resources.listeners)
    assert isinstance(snapshot.raw[CLUSTER_TYPE]["agent/researcher/v1"], any_pb2.Any)
    # Another agent's sidecar: no inbound config of its own in this mesh's example policies.
    planner = assemble({t: decode_all(t, packed(resources, t), agent="planner") for t in TYPE_URLS}, {})
    assert planner.inbound == InboundConfig()


def test_assemble_maps_assignments_by_service_name_and_tolerates_gaps(resources: Resources) -> None:
    cluster = resources.clusters["agent/researcher/v1"].__class__()
    cluster.CopyFrom(resources.clusters["agent/researcher/v1"])
    cluster.name = "alias"
    clusters = decode_all(CLUSTER_TYPE, [pack(cluster), pack(resources.clusters["agent/researcher/v2"])], agent="a")
    endpoints = decode_all(ENDPOINT_TYPE, [pack(resources.endpoints["agent/researcher/v1"])], agent="a")
    routes = decode_all(ROUTE_TYPE, [pack(resources.routes["agent/researcher"])], agent="a")
    snapshot = assemble({CLUSTER_TYPE: clusters, ENDPOINT_TYPE: endpoints, ROUTE_TYPE: routes}, {})
    assert snapshot.endpoints["alias"].cluster == "alias"
    assert snapshot.endpoints["alias"].endpoints == endpoints["agent/researcher/v1"].value.endpoints  # type: ignore[attr-defined]
    assert "agent/researcher/v2" not in snapshot.endpoints  # its assignment has not arrived
    assert "agent/researcher/v1" not in snapshot.clusters  # routes may name it; the request path sees no route
    assert snapshot.listeners == {} and snapshot.inbound is None
