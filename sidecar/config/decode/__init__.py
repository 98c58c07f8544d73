"""xDS v3 resources -> the sidecar's frozen config types (sidecar/config/snapshot.py). Pure.

One module per xDS type (listeners, routes, clusters, endpoints), each a set
of small functions in the manner of grpc-go's `unmarshal_*`: validate what
the sidecar acts on, keep only that, and raise `DecodeError` with a message
naming the resource and field (it becomes the NACK's `error_detail`).

This package adds the type table and the assembly: `decode_all` decodes every
resource of one DiscoveryResponse (all or nothing, reusing what an earlier
response already decoded from identical bytes); `assemble` builds a whole
`MeshSnapshot` from the accepted resources of all four types.

A route may name a cluster that has not arrived (yet), and a cluster may lack
its assignment: `assemble` publishes such snapshots as they are (the control
plane sends clusters first, so this is brief). The request path treats a
cluster missing from `MeshSnapshot.clusters` as no route, and a cluster
without `MeshSnapshot.endpoints` as having no endpoints.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError as ProtoDecodeError
from google.protobuf.message import Message

from sidecar.config.decode._proto import DecodeError
from sidecar.config.decode.clusters import EdsCluster, decode_cluster
from sidecar.config.decode.endpoints import decode_assignment
from sidecar.config.decode.listeners import decode_listener, inbound_listener_name
from sidecar.config.decode.routes import decode_route_configuration
from sidecar.config.snapshot import ApiListener, ClusterEndpoints, InboundConfig, MeshSnapshot, RouteTable

_PREFIX = "type.googleapis.com/"
LISTENER_TYPE = _PREFIX + "envoy.config.listener.v3.Listener"
ROUTE_TYPE = _PREFIX + "envoy.config.route.v3.RouteConfiguration"
CLUSTER_TYPE = _PREFIX + "envoy.config.cluster.v3.Cluster"
ENDPOINT_TYPE = _PREFIX + "envoy.config.endpoint.v3.ClusterLoadAssignment"
TYPE_URLS = (CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE)
TYPE_LABELS: Mapping[str, str] = MappingProxyType(
    {LISTENER_TYPE: "lds", ROUTE_TYPE: "rds", CLUSTER_TYPE: "cds", ENDPOINT_TYPE: "eds"}
)
# A NACK names this many problems at most, then counts the rest.
MAX_REPORTED_ERRORS = 5

__all__ = [
    "CLUSTER_TYPE",
    "ENDPOINT_TYPE",
    "LISTENER_TYPE",
    "ROUTE_TYPE",
    "TYPE_LABELS",
    "TYPE_URLS",
    "DecodeError",
    "Decoded",
    "EdsCluster",
    "assemble",
    "decode_all",
    "decode_resource",
    "inbound_listener_name",
    "type_label",
]


def type_label(type_url: str) -> str:
    """lds, rds, cds, eds (metric labels, config dumps); `other` for anything else."""
    return TYPE_LABELS.get(type_url, "other")


@dataclass(frozen=True)
class _Kind:
    title: str
    message: type[Message]
    name_of: Callable[[Any], str]
    decode: Callable[[Any, str], object]


_KINDS: Mapping[str, _Kind] = MappingProxyType(
    {
        LISTENER_TYPE: _Kind(
            "Listener", listener_pb2.Listener, lambda m: m.name, lambda m, agent: decode_listener(m, agent=agent)
        ),
        ROUTE_TYPE: _Kind(
            "RouteConfiguration",
            route_pb2.RouteConfiguration,
            lambda m: m.name,
            lambda m, _: decode_route_configuration(m),
        ),
        CLUSTER_TYPE: _Kind("Cluster", cluster_pb2.Cluster, lambda m: m.name, lambda m, _: decode_cluster(m)),
        ENDPOINT_TYPE: _Kind(
            "ClusterLoadAssignment",
            endpoint_pb2.ClusterLoadAssignment,
            lambda m: m.cluster_name,
            lambda m, _: decode_assignment(m),
        ),
    }
)


@dataclass(frozen=True)
class Decoded:
    """One accepted resource: as received (for /config_dump and the disk copy) and decoded.

    `value` is an ApiListener, InboundConfig or None (a listener for someone
    else), a RouteTable, an EdsCluster or a ClusterEndpoints, by type.
    """

    packed: any_pb2.Any
    value: object


def decode_resource(packed: any_pb2.Any, *, type_url: str, agent: str) -> tuple[str, Decoded]:
    """Unpacks and decodes one resource of a `type_url` response; returns (resource name, Decoded)."""
    kind = _KINDS.get(type_url)
    if kind is None:
        raise DecodeError(f"resource type {type_url} is not supported")
    if packed.type_url != type_url:
        raise DecodeError(f"a {packed.type_url or 'untyped'} resource in a {kind.title} response")
    message = kind.message()
    try:
        message.ParseFromString(packed.value)
    except ProtoDecodeError as exc:
        raise DecodeError(f"{kind.title}: cannot parse the resource: {exc}") from None
    name = kind.name_of(message)
    if not name:
        raise DecodeError(f"{kind.title} without a name")
    try:
        value = kind.decode(message, agent)
    except DecodeError as exc:
        raise exc.within(f'{kind.title} "{name}"') from None
    return name, Decoded(packed, value)


def decode_all(
    type_url: str,
    resources: Iterable[any_pb2.Any],
    *,
    agent: str,
    previous: Mapping[str, Decoded] | None = None,
) -> dict[str, Decoded]:
    """Decodes every resource of one response, all or nothing; raises DecodeError listing what failed.

    A resource whose bytes equal one in `previous` keeps its earlier decoded
    value (same objects: compiled regexes, RBAC engines and the request
    path's per-cluster state survive updates that do not touch them).
    """
    known = {d.packed.value: (name, d) for name, d in (previous or {}).items()}
    title = _KINDS[type_url].title if type_url in _KINDS else type_url
    decoded: dict[str, Decoded] = {}
    errors: list[str] = []
    for packed in resources:
        reused = known.get(packed.value) if packed.type_url == type_url else None
        try:
            name, item = reused if reused is not None else decode_resource(packed, type_url=type_url, agent=agent)
        except DecodeError as exc:
            errors.append(str(exc))
            continue
        if name in decoded:
            errors.append(f'duplicate {title} "{name}"')
        decoded[name] = item
    if errors:
        more = len(errors) - MAX_REPORTED_ERRORS
        message = "; ".join(errors[:MAX_REPORTED_ERRORS]) + (f" (and {more} more)" if more > 0 else "")
        raise DecodeError(message)
    return decoded


def route_names(listeners: Mapping[str, Decoded]) -> frozenset[str]:
    """The RDS names the accepted api listeners route by (what to subscribe to)."""
    return frozenset(d.value.route_config for d in listeners.values() if isinstance(d.value, ApiListener))


def assignment_names(clusters: Mapping[str, Decoded]) -> frozenset[str]:
    """The EDS names the accepted clusters take endpoints from (what to subscribe to)."""
    return frozenset(d.value.service_name for d in clusters.values() if isinstance(d.value, EdsCluster))


def _values(resources: Mapping[str, Decoded], kind: type[Any]) -> dict[str, Any]:
    return {name: d.value for name, d in resources.items() if isinstance(d.value, kind)}


def assemble(resources: Mapping[str, Mapping[str, Decoded]], versions: Mapping[str, str]) -> MeshSnapshot:
    """One MeshSnapshot from the accepted resources per type URL and the version accepted per type URL.

    `endpoints` is keyed by cluster name (an assignment shared by several
    clusters through `service_name` appears under each).
    """
    listeners = resources.get(LISTENER_TYPE, {})
    clusters: dict[str, EdsCluster] = _values(resources.get(CLUSTER_TYPE, {}), EdsCluster)
    assignments: dict[str, ClusterEndpoints] = _values(resources.get(ENDPOINT_TYPE, {}), ClusterEndpoints)
    endpoints: dict[str, ClusterEndpoints] = {}
    for name, cluster in clusters.items():
        assignment = assignments.get(cluster.service_name)
        if assignment is not None:
            endpoints[name] = assignment if assignment.cluster == name else replace(assignment, cluster=name)
    inbound = [d.value for d in listeners.values() if isinstance(d.value, InboundConfig)]
    return MeshSnapshot(
        listeners=MappingProxyType(_values(listeners, ApiListener)),
        routes=MappingProxyType(_values(resources.get(ROUTE_TYPE, {}), RouteTable)),
        clusters=MappingProxyType({name: c.cluster for name, c in clusters.items()}),
        endpoints=MappingProxyType(endpoints),
        inbound=inbound[0] if inbound else None,
        versions=MappingProxyType({t: versions[t] for t in TYPE_URLS if t in versions}),
        raw=MappingProxyType(
            {t: MappingProxyType({n: d.packed for n, d in resources[t].items()}) for t in TYPE_URLS if t in resources}
        ),
    )
