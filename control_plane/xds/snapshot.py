"""An immutable set of xDS resources for one node: what the ADS server serves.

The translator (`control_plane/translate/`) builds a `Snapshot` from one policy
version plus the registry; the cache (`cache.py`) publishes it to nodes; the
ADS server (`ads_server.py`) reads resources out of it. A snapshot holds, per
resource type URL, an ordered mapping resource name -> packed
`google.protobuf.Any`, serialized deterministically so that equal resources
have equal bytes and a content digest can tell whether a type changed.

Before a snapshot is published it must be self-consistent
(`Snapshot.consistency_errors()`): every cluster a route names exists, every
EDS cluster has a `ClusterLoadAssignment`, every RDS name a listener uses has a
`RouteConfiguration`. A consumer should rarely have a reason to NACK.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError, Message

_TYPE_PREFIX = "type.googleapis.com/"

LISTENER_TYPE = _TYPE_PREFIX + "envoy.config.listener.v3.Listener"
ROUTE_TYPE = _TYPE_PREFIX + "envoy.config.route.v3.RouteConfiguration"
CLUSTER_TYPE = _TYPE_PREFIX + "envoy.config.cluster.v3.Cluster"
ENDPOINT_TYPE = _TYPE_PREFIX + "envoy.config.endpoint.v3.ClusterLoadAssignment"

HCM_TYPE = _TYPE_PREFIX + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
TCP_PROXY_TYPE = _TYPE_PREFIX + "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"

# Clusters and their endpoints go out before the listeners and routes that use
# them, so a consumer never holds a route to a cluster it has not heard of.
PUSH_ORDER: tuple[str, ...] = (CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE)

# Short names for metric labels and CLI columns (the xDS service each type belongs to).
TYPE_LABELS: Mapping[str, str] = MappingProxyType(
    {LISTENER_TYPE: "lds", ROUTE_TYPE: "rds", CLUSTER_TYPE: "cds", ENDPOINT_TYPE: "eds"}
)


@dataclass(frozen=True)
class _ResourceType:
    message: type[Message]
    name_of: Callable[[Any], str]


_RESOURCE_TYPES: Mapping[str, _ResourceType] = MappingProxyType(
    {
        LISTENER_TYPE: _ResourceType(listener_pb2.Listener, lambda m: m.name),
        ROUTE_TYPE: _ResourceType(route_pb2.RouteConfiguration, lambda m: m.name),
        CLUSTER_TYPE: _ResourceType(cluster_pb2.Cluster, lambda m: m.name),
        ENDPOINT_TYPE: _ResourceType(endpoint_pb2.ClusterLoadAssignment, lambda m: m.cluster_name),
    }
)

RESOURCE_TYPES: frozenset[str] = frozenset(_RESOURCE_TYPES)


def type_label(type_url: str) -> str:
    """The short label of a served type (`lds`, `rds`, `cds`, `eds`), `other` for anything else."""
    return TYPE_LABELS.get(type_url, "other")


def type_url_of(message: Message) -> str:
    """The type URL a message is served under (`type.googleapis.com/<full name>`)."""
    return _TYPE_PREFIX + message.DESCRIPTOR.full_name


class InconsistentSnapshotError(ValueError):
    """A snapshot refers to resources it does not contain; `problems` lists each one."""

    def __init__(self, version: str, problems: list[str]) -> None:
        self.version = version
        self.problems = problems
        super().__init__(f"snapshot {version!r} is inconsistent: " + "; ".join(problems))


def _pack(type_url: str, resource: Message | any_pb2.Any) -> tuple[str, any_pb2.Any]:
    kind = _RESOURCE_TYPES[type_url]
    if isinstance(resource, any_pb2.Any):
        if resource.type_url != type_url:
            raise ValueError(f"an Any of type {resource.type_url!r} cannot be served as {type_url!r}")
        message = kind.message()
        try:
            message.ParseFromString(resource.value)
        except DecodeError as exc:
            raise ValueError(f"undecodable {type_url} resource: {exc}") from exc
    elif isinstance(resource, kind.message):
        message = resource
    else:
        raise ValueError(f"a {type(resource).__name__} cannot be served as {type_url!r}")
    packed = any_pb2.Any()
    # Deterministic bytes: equal resources digest equally, so unchanged types are not re-pushed.
    packed.Pack(message, deterministic=True)
    return kind.name_of(message), packed


class Snapshot:
    """One immutable version of the resources a node should have.

    `Snapshot(version, {CLUSTER_TYPE: {"agent/researcher/v1": cluster, ...}, ...})`
    takes, per type URL, resource name -> message or packed `Any`; each name must
    equal the resource's own name (`name`, or `cluster_name` for a
    `ClusterLoadAssignment`). `Snapshot.from_resources(version, [messages])`
    infers both. Types absent from the mapping hold no resources. The packed
    resources it hands out are shared: treat them as read-only.
    """

    __slots__ = ("_digests", "_problems", "_resources", "_type_digests", "_version")

    def __init__(
        self, version: str, resources: Mapping[str, Mapping[str, Message | any_pb2.Any]] | None = None
    ) -> None:
        given = resources or {}
        for type_url in given:
            if type_url not in _RESOURCE_TYPES:
                raise ValueError(f"unsupported resource type {type_url!r}")
        packed: dict[str, dict[str, any_pb2.Any]] = {}
        for type_url, by_key in given.items():
            packed[type_url] = {}
            for key, resource in by_key.items():
                name, value = _pack(type_url, resource)
                if name != key:
                    raise ValueError(f"{type_url} resource is named {name!r} but filed under {key!r}")
                packed[type_url][name] = value
        self._init(version, packed)

    @classmethod
    def from_resources(cls, version: str, resources: Iterable[Message | any_pb2.Any]) -> Snapshot:
        """Builds a snapshot from resources of any served type, names taken from the resources."""
        packed: dict[str, dict[str, any_pb2.Any]] = {}
        for resource in resources:
            type_url = resource.type_url if isinstance(resource, any_pb2.Any) else type_url_of(resource)
            if type_url not in _RESOURCE_TYPES:
                raise ValueError(f"unsupported resource type {type_url!r}")
            name, value = _pack(type_url, resource)
            by_name = packed.setdefault(type_url, {})
            if name in by_name:
                raise ValueError(f"duplicate {type_url} resource {name!r}")
            by_name[name] = value
        snapshot = cls.__new__(cls)
        snapshot._init(version, packed)
        return snapshot

    def _init(self, version: str, packed: Mapping[str, dict[str, any_pb2.Any]]) -> None:
        if not version:
            raise ValueError("a snapshot needs a non-empty version")
        resources: dict[str, Mapping[str, any_pb2.Any]] = {}
        digests: dict[str, Mapping[str, str]] = {}
        type_digests: dict[str, str] = {}
        for type_url in _RESOURCE_TYPES:
            by_name = packed.get(type_url, {})
            resources[type_url] = MappingProxyType(by_name)
            digests[type_url] = MappingProxyType(
                {name: hashlib.sha256(value.value).hexdigest() for name, value in by_name.items()}
            )
            type_digests[type_url] = selection_digest(digests[type_url].items())
        self._version = version
        self._resources: Mapping[str, Mapping[str, any_pb2.Any]] = MappingProxyType(resources)
        self._digests: Mapping[str, Mapping[str, str]] = MappingProxyType(digests)
        self._type_digests: Mapping[str, str] = MappingProxyType(type_digests)
        self._problems: tuple[str, ...] | None = None

    @property
    def version(self) -> str:
        return self._version

    def resources(self, type_url: str) -> Mapping[str, any_pb2.Any]:
        """Resource name -> packed resource for one type (empty for types this snapshot lacks)."""
        return self._resources.get(type_url, MappingProxyType({}))

    def unpack(self, type_url: str, name: str) -> Any:
        """The resource as its message class; raises KeyError when absent."""
        message = _RESOURCE_TYPES[type_url].message()
        self._resources[type_url][name].Unpack(message)
        return message

    def digest(self, type_url: str) -> str:
        """Content digest of every resource of one type: equal digests mean nothing changed."""
        return self._type_digests.get(type_url, selection_digest(()))

    def resource_digests(self, type_url: str) -> Mapping[str, str]:
        """Resource name -> content digest, for digesting a subset of names (RDS/EDS subscriptions)."""
        return self._digests.get(type_url, MappingProxyType({}))

    def consistency_errors(self) -> list[str]:
        """Every dangling reference in the snapshot; empty when it is safe to publish."""
        if self._problems is None:
            # Immutable, so checked once however many nodes it is published to.
            self._problems = tuple(_Checker(self).run())
        return list(self._problems)

    def check_consistent(self) -> None:
        """Raises InconsistentSnapshotError unless `consistency_errors()` is empty."""
        problems = self.consistency_errors()
        if problems:
            raise InconsistentSnapshotError(self._version, problems)

    def __repr__(self) -> str:
        counts = ", ".join(f"{type_label(t)}={len(r)}" for t, r in self._resources.items())
        return f"Snapshot(version={self._version!r}, {counts})"


def selection_digest(items: Iterable[tuple[str, str]]) -> str:
    """Digest of (name, resource digest) pairs, independent of their order."""
    hasher = hashlib.sha256()
    for name, digest in sorted(items):
        hasher.update(name.encode())
        hasher.update(b"\0")
        hasher.update(digest.encode())
        hasher.update(b"\n")
    return hasher.hexdigest()


class _Checker:
    """Walks listeners, routes and clusters, collecting references that do not resolve."""

    def __init__(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot
        self._clusters = snapshot.resources(CLUSTER_TYPE)
        self._routes = snapshot.resources(ROUTE_TYPE)
        self._endpoints = snapshot.resources(ENDPOINT_TYPE)
        self._problems: list[str] = []

    def run(self) -> list[str]:
        for name in self._snapshot.resources(LISTENER_TYPE):
            self._listener(name, self._snapshot.unpack(LISTENER_TYPE, name))
        for name in self._routes:
            self._route_configuration(f"route configuration {name!r}", self._snapshot.unpack(ROUTE_TYPE, name))
        for name in self._clusters:
            self._cluster(name, self._snapshot.unpack(CLUSTER_TYPE, name))
        return self._problems

    def _listener(self, name: str, listener: Any) -> None:
        where = f"listener {name!r}"
        if listener.HasField("api_listener"):
            self._network_filter(f"{where} api_listener", listener.api_listener.api_listener)
        chains = list(listener.filter_chains)
        if listener.HasField("default_filter_chain"):
            chains.append(listener.default_filter_chain)
        for index, chain in enumerate(chains):
            for position, network_filter in enumerate(chain.filters):
                if network_filter.HasField("typed_config"):
                    self._network_filter(
                        f"{where} filter chain {chain.name or index} filter {network_filter.name or position}",
                        network_filter.typed_config,
                    )

    def _network_filter(self, where: str, config: any_pb2.Any) -> None:
        if config.type_url == HCM_TYPE:
            hcm = http_connection_manager_pb2.HttpConnectionManager()
            if not self._unpack(where, config, hcm):
                return
            if hcm.HasField("rds"):
                route_name = hcm.rds.route_config_name
                if route_name not in self._routes:
                    self._problems.append(f"{where}: route configuration {route_name!r} is not in the snapshot")
            elif hcm.HasField("route_config"):
                self._route_configuration(f"{where} inline route configuration", hcm.route_config)
        elif config.type_url == TCP_PROXY_TYPE:
            tcp = tcp_proxy_pb2.TcpProxy()
            if not self._unpack(where, config, tcp):
                return
            if tcp.WhichOneof("cluster_specifier") == "cluster":
                self._cluster_ref(where, tcp.cluster)
            else:
                for weighted in tcp.weighted_clusters.clusters:
                    self._cluster_ref(where, weighted.name)

    def _unpack(self, where: str, config: any_pb2.Any, into: Message) -> bool:
        try:
            config.Unpack(into)
        except DecodeError as exc:
            self._problems.append(f"{where}: cannot decode {config.type_url}: {exc}")
            return False
        return True

    def _route_configuration(self, where: str, config: Any) -> None:
        for host in config.virtual_hosts:
            for index, route in enumerate(host.routes):
                if not route.HasField("route"):
                    continue
                at = f"{where} virtual host {host.name!r} route {route.name or index}"
                action = route.route
                specifier = action.WhichOneof("cluster_specifier")
                if specifier == "cluster":
                    self._cluster_ref(at, action.cluster)
                elif specifier == "weighted_clusters":
                    for weighted in action.weighted_clusters.clusters:
                        self._cluster_ref(at, weighted.name)
                for mirror in action.request_mirror_policies:
                    if mirror.cluster:
                        self._cluster_ref(f"{at} mirror", mirror.cluster)

    def _cluster_ref(self, where: str, cluster: str) -> None:
        if cluster not in self._clusters:
            self._problems.append(f"{where}: cluster {cluster!r} is not in the snapshot")

    def _cluster(self, name: str, cluster: Any) -> None:
        if cluster.WhichOneof("cluster_discovery_type") != "type" or cluster.type != cluster_pb2.Cluster.EDS:
            return
        service = cluster.eds_cluster_config.service_name or name
        if service not in self._endpoints:
            self._problems.append(f"cluster {name!r}: EDS assignment {service!r} is not in the snapshot")


def iter_resources(snapshot: Snapshot) -> Iterator[tuple[str, str, any_pb2.Any]]:
    """Every (type URL, name, packed resource) in push order; for config dumps."""
    for type_url in PUSH_ORDER:
        for name, value in snapshot.resources(type_url).items():
            yield type_url, name, value
