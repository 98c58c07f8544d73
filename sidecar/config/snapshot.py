"""The sidecar's compiled view of its xDS config: what decode/ builds and the request path reads.

Every type here is frozen and holds only what the sidecar acts on, already
validated and compiled (regexes, retry codes, weights). A new `MeshSnapshot`
is built whole when any xDS resource changes and published with one
reference swap; a call reads the snapshot once at its start, so an update
never changes a call in flight.

Field meanings follow the xDS fields they come from (named in each docstring);
for the features we support, the sidecar must decide as Envoy decides.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

import grpc

from agentmesh.config.regex import Pattern
from agentmesh.identity.spiffe import SpiffeId

LbPolicy = Literal["least_request", "round_robin", "peak_ewma"]

# A header sent several times is kept as its values joined by this (it cannot occur in a
# gRPC or HTTP header value); matchers, as Envoy's, match when any one value matches.
REPEATED_VALUE_SEPARATOR = "\x00"


@dataclass(frozen=True)
class HeaderMatcher:
    """config.route.v3.HeaderMatcher (string_match / present_match / invert_match)."""

    name: str
    exact: str | None = None
    prefix: str | None = None
    suffix: str | None = None
    contains: str | None = None
    regex: Pattern | None = None
    present: bool | None = None
    invert: bool = False

    def matches(self, headers: Mapping[str, str]) -> bool:
        value = headers.get(self.name)
        if self.present is not None:
            result = (value is not None) == self.present
        elif value is None:
            # Envoy: an absent header never matches a value matcher, inverted or not.
            return False
        else:
            result = any(self._matches_value(v) for v in value.split(REPEATED_VALUE_SEPARATOR))
        return result != self.invert

    def _matches_value(self, value: str) -> bool:
        if self.exact is not None:
            return value == self.exact
        if self.prefix is not None:
            return value.startswith(self.prefix)
        if self.suffix is not None:
            return value.endswith(self.suffix)
        if self.contains is not None:
            return self.contains in value
        if self.regex is not None:
            return self.regex.fullmatch(value) is not None
        return True


@dataclass(frozen=True)
class RetryPolicy:
    """config.route.v3.RetryPolicy, gRPC flavour (retry_on gRPC status names)."""

    retry_on: frozenset[grpc.StatusCode]
    num_retries: int
    per_try_timeout: float | None
    backoff_base: float = 0.025
    backoff_max: float = 0.25


@dataclass(frozen=True)
class WeightedCluster:
    """config.route.v3.WeightedCluster.ClusterWeight."""

    name: str
    weight: int


@dataclass(frozen=True)
class RouteAction:
    """config.route.v3.RouteAction: `cluster` becomes a single weighted entry."""

    clusters: tuple[WeightedCluster, ...]
    # RouteAction.timeout; None when unset or 0 (no timeout).
    timeout: float | None
    retry: RetryPolicy | None
    # RouteAction.hash_policy[].header.header_name: the same value always picks the same cluster.
    hash_header: str | None = None
    # Derived once for the split (sidecar/outbound/split.py): the sum of the weights and the
    # lower-cased hash header (metadata keys are lower-case).
    total_weight: int = field(init=False, repr=False, compare=False)
    hash_key: str | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "total_weight", sum(c.weight for c in self.clusters))
        object.__setattr__(self, "hash_key", self.hash_header.lower() if self.hash_header is not None else None)


@dataclass(frozen=True)
class Route:
    """config.route.v3.Route: a match (path prefix/exact/regex, headers) and its action."""

    name: str
    action: RouteAction
    prefix: str | None = None
    path: str | None = None
    path_regex: Pattern | None = None
    headers: tuple[HeaderMatcher, ...] = ()

    def matches(self, path: str, headers: Mapping[str, str]) -> bool:
        if self.path is not None and path != self.path:
            return False
        if self.prefix is not None and not path.startswith(self.prefix):
            return False
        if self.path_regex is not None and self.path_regex.fullmatch(path) is None:
            return False
        return all(h.matches(headers) for h in self.headers)


@dataclass(frozen=True)
class VirtualHost:
    """config.route.v3.VirtualHost: domains (exact, `*`, `prefix*`, `*suffix`) and ordered routes."""

    name: str
    domains: tuple[str, ...]
    routes: tuple[Route, ...]


@dataclass(frozen=True)
class RouteTable:
    """config.route.v3.RouteConfiguration.

    Domains are lower-cased once here for the router (sidecar/outbound/router.py):
    `exact` maps each exact domain to the first virtual host naming it, and
    `wildcards` keeps the other domains (`*`, `prefix*`, `*suffix`) in order.
    """

    name: str
    virtual_hosts: tuple[VirtualHost, ...]
    exact: Mapping[str, VirtualHost] = field(init=False, repr=False, compare=False)
    wildcards: tuple[tuple[str, VirtualHost], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        exact: dict[str, VirtualHost] = {}
        wildcards: list[tuple[str, VirtualHost]] = []
        for virtual_host in self.virtual_hosts:
            for domain in virtual_host.domains:
                lowered = domain.lower()
                if lowered.startswith("*") or lowered.endswith("*"):
                    wildcards.append((lowered, virtual_host))
                else:
                    exact.setdefault(lowered, virtual_host)
        object.__setattr__(self, "exact", MappingProxyType(exact))
        object.__setattr__(self, "wildcards", tuple(wildcards))


@dataclass(frozen=True)
class OutlierDetection:
    """config.cluster.v3.OutlierDetection (consecutive errors and success rate)."""

    consecutive_errors: int = 5
    interval: float = 10.0
    base_ejection_time: float = 30.0
    max_ejection_time: float = 300.0
    max_ejection_percent: int = 10
    # success_rate_*: eject hosts whose success rate is below mean - stdev_factor/1000 * stdev.
    success_rate_minimum_hosts: int = 5
    success_rate_request_volume: int = 100
    success_rate_stdev_factor: int = 1900
    enforcing_consecutive_errors: int = 100
    enforcing_success_rate: int = 0
    # failure_percentage_*: eject hosts whose failure rate is at least `threshold` %.
    failure_percentage_threshold: int = 85
    failure_percentage_minimum_hosts: int = 5
    failure_percentage_request_volume: int = 50
    enforcing_failure_percentage: int = 0


@dataclass(frozen=True)
class CircuitBreakers:
    """config.cluster.v3.CircuitBreakers.Thresholds (default priority), with retry_budget."""

    max_requests: int = 1024
    max_pending_requests: int = 1024
    max_retries: int = 3
    # RetryBudget: retries may be at most this % of active requests, but always `min_retry_concurrency`.
    retry_budget_percent: float | None = None
    min_retry_concurrency: int = 3


@dataclass(frozen=True)
class UpstreamTls:
    """Cluster.transport_socket `envoy.transport_sockets.tls` (UpstreamTlsContext): mutual TLS to the upstream.

    `identities` are the SPIFFE IDs the upstream's certificate may carry
    (validation context `match_typed_subject_alt_names`, URI, exact); the
    sidecar checks the one expected at an endpoint through its DNS name
    (`SpiffeId.dns_name`, also the `sni`). The sidecar's own certificate and
    trust bundle come from its identity, not from the cluster.
    """

    identities: tuple[SpiffeId, ...]
    sni: str = ""


@dataclass(frozen=True)
class Cluster:
    """config.cluster.v3.Cluster (type EDS)."""

    name: str
    lb_policy: LbPolicy = "least_request"
    connect_timeout: float = 1.0
    outlier: OutlierDetection | None = None
    circuit_breakers: CircuitBreakers = CircuitBreakers()
    # None: plaintext (no transport_socket, or raw_buffer).
    tls: UpstreamTls | None = None


@dataclass(frozen=True)
class Endpoint:
    """endpoint.v3.LbEndpoint: a sidecar inbound address, its health and weight."""

    address: str
    healthy: bool
    weight: int = 1
    zone: str = ""


@dataclass(frozen=True)
class ClusterEndpoints:
    """endpoint.v3.ClusterLoadAssignment, flattened over localities."""

    cluster: str
    endpoints: tuple[Endpoint, ...]


@dataclass(frozen=True)
class ApiListener:
    """listener.v3.Listener with api_listener: a proxyless target name and its route table (RDS name)."""

    name: str
    route_config: str


@dataclass(frozen=True)
class InboundConfig:
    """The agent's inbound listener `inbound/<name>`: access filters and headers to add.

    `rbac` holds the listener's envoy.filters.http.rbac configs in filter order
    (the type lives with the RBAC filter, sidecar/filters/rbac.py).
    """

    rbac: tuple[object, ...] = ()
    # RouteConfiguration.virtual_hosts[].request_headers_to_add (AgentConfig values).
    request_headers: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class MeshSnapshot:
    """Everything the sidecar knows from xDS at one moment.

    `versions` is the version_info ACKed per type URL; `raw` keeps the resources
    as received (type URL -> name -> google.protobuf.Any) for /config_dump and
    for the on-disk copy the sidecar starts from when the control plane is away.
    """

    listeners: Mapping[str, ApiListener] = field(default_factory=lambda: MappingProxyType({}))
    routes: Mapping[str, RouteTable] = field(default_factory=lambda: MappingProxyType({}))
    clusters: Mapping[str, Cluster] = field(default_factory=lambda: MappingProxyType({}))
    endpoints: Mapping[str, ClusterEndpoints] = field(default_factory=lambda: MappingProxyType({}))
    inbound: InboundConfig | None = None
    versions: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    raw: Mapping[str, Mapping[str, object]] = field(default_factory=lambda: MappingProxyType({}))

    def route_table(self, target: str) -> RouteTable | None:
        """The route table of a proxyless target (an agent name or a service full name)."""
        listener = self.listeners.get(target)
        return None if listener is None else self.routes.get(listener.route_config)


EMPTY_SNAPSHOT = MeshSnapshot()
