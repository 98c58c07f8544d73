"""CDS: `Cluster` -> `Cluster`, the balancing, ejection and circuit-breaking of one upstream.

Only EDS clusters over ADS are supported (the sidecar balances over endpoints
the control plane sends; it resolves no DNS). Upstreams speak plaintext gRPC,
or mutual TLS when the cluster has an `envoy.transport_sockets.tls`
transport socket: its UpstreamTlsContext names the SPIFFE IDs the upstream
must prove (URI SAN matchers, exact) and the SNI; where certificates come
from (certificate provider instances, SDS) is for other consumers, the
sidecar uses its own identity.
Fields left unset take Envoy's defaults, not the dataclass defaults:
connect_timeout 5 s; outlier detection 5 consecutive errors, 10 s interval,
30 s base ejection, max ejection max(300 s, base), 10 % max ejected,
success-rate enforcement 100 %; circuit breaking 1024 requests, 1024 pending,
3 retries, or a retry budget of 20 % with a minimum concurrency of 3 when
`retry_budget` is present (then `max_retries` does not apply).

Balancer choice: the first entry of `load_balancing_policy` the sidecar
implements (least_request, round_robin, `agentmesh.v1.PeakEwmaLoadBalancer`).
When the list names only hash-based or random balancers, the sidecar falls
back to the `lb_policy` enum: a sticky route still pins its version through
the route's `hash_policy`, while the endpoint within the version is balanced
normally. A list of nothing the sidecar knows is a DecodeError, as in Envoy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2
from google.protobuf.message import DecodeError as ProtoDecodeError

from agentmesh.identity.spiffe import InvalidSpiffeId, SpiffeId
from sidecar.config.decode._proto import DecodeError, percent, seconds, uint
from sidecar.config.snapshot import CircuitBreakers, Cluster, LbPolicy, OutlierDetection, UpstreamTls

_EXT = "type.googleapis.com/envoy.extensions.load_balancing_policies."
PEAK_EWMA_TYPE = "type.googleapis.com/agentmesh.v1.PeakEwmaLoadBalancer"
_SUPPORTED_POLICIES: dict[str, LbPolicy] = {
    _EXT + "least_request.v3.LeastRequest": "least_request",
    _EXT + "round_robin.v3.RoundRobin": "round_robin",
    PEAK_EWMA_TYPE: "peak_ewma",
}
# Balancers the sidecar approximates with the lb_policy enum rather than rejecting the cluster.
_FALLBACK_POLICIES = frozenset({_EXT + "ring_hash.v3.RingHash", _EXT + "maglev.v3.Maglev", _EXT + "random.v3.Random"})
# Cluster.LbPolicy enum values (ROUND_ROBIN, LEAST_REQUEST, RING_HASH, RANDOM, MAGLEV).
_ENUM_POLICIES: dict[int, LbPolicy] = {
    0: "round_robin",
    1: "least_request",
    2: "round_robin",
    3: "round_robin",
    5: "round_robin",
}
_EDS = 3  # Cluster.DiscoveryType.EDS
_DEFAULT_PRIORITY = 0  # config.core.v3.RoutingPriority.DEFAULT
_RAW_BUFFER = "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"
_UPSTREAM_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
_SAN_URI = common_pb2.SubjectAltNameMatcher.URI

DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_MAX_EJECTION_TIME = 300.0
DEFAULT_BUDGET_PERCENT = 20.0
DEFAULT_MIN_RETRY_CONCURRENCY = 3


@dataclass(frozen=True)
class EdsCluster:
    """A decoded cluster and the name of the ClusterLoadAssignment that feeds it."""

    cluster: Cluster
    service_name: str


def decode_cluster(cluster: Any) -> EdsCluster:
    """Decodes a config.cluster.v3.Cluster; raises DecodeError naming the offending field."""
    kind = cluster.WhichOneof("cluster_discovery_type")
    if kind == "cluster_type":
        raise DecodeError(f"cluster_type {cluster.cluster_type.name} is not supported: only EDS clusters are")
    if cluster.type != _EDS:
        name = type(cluster).DiscoveryType.Name(cluster.type)
        raise DecodeError(f"type {name} is not supported: only EDS clusters are")
    source = cluster.eds_cluster_config.eds_config.WhichOneof("config_source_specifier")
    if source not in ("ads", "self"):
        what = source or "unset"
        raise DecodeError(f"eds_cluster_config.eds_config is {what}: endpoints must come over ADS")
    if cluster.HasField("lb_subset_config"):
        raise DecodeError("lb_subset_config is not supported")
    tls = _transport(cluster)
    connect_timeout = DEFAULT_CONNECT_TIMEOUT
    if cluster.HasField("connect_timeout"):
        connect_timeout = seconds(cluster.connect_timeout, "connect_timeout")
        if connect_timeout <= 0:
            raise DecodeError("connect_timeout must be greater than 0")
    decoded = Cluster(
        name=cluster.name,
        lb_policy=_lb_policy(cluster),
        connect_timeout=connect_timeout,
        outlier=_outlier(cluster.outlier_detection) if cluster.HasField("outlier_detection") else None,
        circuit_breakers=_circuit_breakers(cluster.circuit_breakers),
        tls=tls,
    )
    return EdsCluster(decoded, cluster.eds_cluster_config.service_name or cluster.name)


def _transport(cluster: Any) -> UpstreamTls | None:
    """Cluster.transport_socket: None for plaintext (unset or raw_buffer), else the upstream's mTLS identity."""
    if len(cluster.transport_socket_matches):
        raise DecodeError("transport_socket_matches is not supported: use transport_socket")
    if not cluster.HasField("transport_socket"):
        return None
    socket = cluster.transport_socket
    type_url = socket.typed_config.type_url
    if type_url == _RAW_BUFFER:
        return None
    if type_url != _UPSTREAM_TLS:
        what = type_url or f"{socket.name or 'unnamed'} without typed_config"
        raise DecodeError(f"transport_socket: {what} is not supported (only raw_buffer and UpstreamTlsContext)")
    context = tls_pb2.UpstreamTlsContext()
    try:
        context.ParseFromString(socket.typed_config.value)
    except ProtoDecodeError as exc:
        raise DecodeError(f"transport_socket.typed_config: cannot parse the UpstreamTlsContext: {exc}") from None
    return _upstream_tls(context, "transport_socket.typed_config")


def _upstream_tls(context: Any, base: str) -> UpstreamTls:
    common = context.common_tls_context
    at = base
    kind = common.WhichOneof("validation_context_type")
    if kind == "combined_validation_context":
        validation, at = (
            common.combined_validation_context.default_validation_context,
            f"{at}.common_tls_context.combined_validation_context.default_validation_context",
        )
    elif kind == "validation_context":
        validation, at = common.validation_context, f"{at}.common_tls_context.validation_context"
    else:
        raise DecodeError(
            f"{at}.common_tls_context: no validation_context or combined_validation_context: "
            "the sidecar verifies upstreams by SPIFFE ID (match_typed_subject_alt_names)"
        )
    # As in Envoy, the older untyped list (kept for gRPC's xDS client) counts only when the typed one is empty.
    if len(validation.match_typed_subject_alt_names):
        field = "match_typed_subject_alt_names"
        matchers = [
            (m.matcher, f"[{i}].matcher")
            for i, m in enumerate(validation.match_typed_subject_alt_names)
            if m.san_type == _SAN_URI
        ]  # DNS names say the same in another form; the URI is the identity
    else:
        field = "match_subject_alt_names"
        matchers = [(m, f"[{i}]") for i, m in enumerate(validation.match_subject_alt_names)]
    identities: list[SpiffeId] = []
    for matcher, index in matchers:
        where = f"{at}.{field}{index}"
        pattern = matcher.WhichOneof("match_pattern")
        if pattern != "exact" or matcher.ignore_case:
            what = "exact with ignore_case" if pattern == "exact" else pattern
            raise DecodeError(f"{where}: only a case-sensitive exact match of a SPIFFE ID is supported, not {what}")
        try:
            identities.append(SpiffeId.parse(matcher.exact))
        except InvalidSpiffeId as exc:
            raise DecodeError(f"{where}.exact: {exc}") from None
    if not identities:
        raise DecodeError(f"{at}.match_typed_subject_alt_names: no URI matcher names the SPIFFE ID to expect")
    sni = context.sni
    if sni and all(sni != identity.dns_name for identity in identities):
        expected = ", ".join(identity.dns_name for identity in identities)
        raise DecodeError(f"{base}.sni: {sni!r} is not the DNS name of an expected identity ({expected})")
    return UpstreamTls(tuple(identities), sni)


def _lb_policy(cluster: Any) -> LbPolicy:
    policies = [p.typed_extension_config.typed_config.type_url for p in cluster.load_balancing_policy.policies]
    for type_url in policies:
        if type_url in _SUPPORTED_POLICIES:
            return _SUPPORTED_POLICIES[type_url]
    if policies and not any(type_url in _FALLBACK_POLICIES for type_url in policies):
        raise DecodeError(f"load_balancing_policy: none of the policies is supported ({', '.join(policies)})")
    choice = _ENUM_POLICIES.get(cluster.lb_policy)
    if choice is None:
        raise DecodeError(f"lb_policy {type(cluster).LbPolicy.Name(cluster.lb_policy)} is not supported")
    return choice


def _outlier(config: Any) -> OutlierDetection:
    at = "outlier_detection"
    interval = seconds(config.interval, f"{at}.interval") if config.HasField("interval") else 10.0
    if interval <= 0:
        raise DecodeError(f"{at}.interval must be greater than 0")
    base = (
        seconds(config.base_ejection_time, f"{at}.base_ejection_time")
        if config.HasField("base_ejection_time")
        else 30.0
    )
    if config.HasField("max_ejection_time"):
        maximum = seconds(config.max_ejection_time, f"{at}.max_ejection_time")
        if maximum < base:
            raise DecodeError(f"{at}.max_ejection_time ({maximum:g}s) is less than base_ejection_time ({base:g}s)")
    else:
        maximum = max(DEFAULT_MAX_EJECTION_TIME, base)
    return OutlierDetection(
        consecutive_errors=uint(config, "consecutive_5xx", 5),
        interval=interval,
        base_ejection_time=base,
        max_ejection_time=maximum,
        # Envoy treats more than 100 % as 100 %.
        max_ejection_percent=min(uint(config, "max_ejection_percent", 10), 100),
        success_rate_minimum_hosts=uint(config, "success_rate_minimum_hosts", 5),
        success_rate_request_volume=uint(config, "success_rate_request_volume", 100),
        success_rate_stdev_factor=uint(config, "success_rate_stdev_factor", 1900),
        enforcing_consecutive_errors=percent(config, "enforcing_consecutive_5xx", 100, at),
        enforcing_success_rate=percent(config, "enforcing_success_rate", 100, at),
        failure_percentage_threshold=percent(config, "failure_percentage_threshold", 85, at),
        failure_percentage_minimum_hosts=uint(config, "failure_percentage_minimum_hosts", 5),
        failure_percentage_request_volume=uint(config, "failure_percentage_request_volume", 50),
        enforcing_failure_percentage=percent(config, "enforcing_failure_percentage", 0, at),
    )


def _circuit_breakers(config: Any) -> CircuitBreakers:
    # Envoy: the first thresholds entry of a priority applies; every sidecar call has DEFAULT priority.
    thresholds = next((t for t in config.thresholds if t.priority == _DEFAULT_PRIORITY), None)
    if thresholds is None:
        return CircuitBreakers()
    budget_percent: float | None = None
    min_concurrency = DEFAULT_MIN_RETRY_CONCURRENCY
    if thresholds.HasField("retry_budget"):
        budget = thresholds.retry_budget
        budget_percent = budget.budget_percent.value if budget.HasField("budget_percent") else DEFAULT_BUDGET_PERCENT
        if not 0 <= budget_percent <= 100:
            raise DecodeError(
                f"circuit_breakers.thresholds.retry_budget.budget_percent is {budget_percent:g}, not 0..100"
            )
        min_concurrency = uint(budget, "min_retry_concurrency", DEFAULT_MIN_RETRY_CONCURRENCY)
    return CircuitBreakers(
        max_requests=uint(thresholds, "max_requests", 1024),
        max_pending_requests=uint(thresholds, "max_pending_requests", 1024),
        max_retries=uint(thresholds, "max_retries", 3),
        retry_budget_percent=budget_percent,
        min_retry_concurrency=min_concurrency,
    )
