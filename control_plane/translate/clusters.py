"""CDS: one Cluster per agent version (`agent/<name>/<version>`) and per capability (`service/<Service>`).

Every cluster is EDS over ADS and speaks HTTP/2 (gRPC) upstream. Its
balancing, outlier detection, circuit breaking and retry budget come from the
TrafficPolicy targeting the agent (or the service); without one, the defaults
below apply. Balancing is a `load_balancing_policy` list: consumers use the
first entry they support, so `peak_ewma` (our sidecar's) falls back to
least-request and then round-robin in Envoy and gRPC clients.
"""

from __future__ import annotations

from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2, outlier_detection_pb2
from envoy.config.core.v3 import base_pb2, extension_pb2, protocol_pb2
from envoy.extensions.load_balancing_policies.least_request.v3 import least_request_pb2
from envoy.extensions.load_balancing_policies.ring_hash.v3 import ring_hash_pb2
from envoy.extensions.load_balancing_policies.round_robin.v3 import round_robin_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from envoy.type.v3 import percent_pb2
from google.protobuf import any_pb2, wrappers_pb2

from control_plane.policy.model import OutlierDetection, RetryBudget, TrafficPolicySpec
from control_plane.translate._xds import ads_source, duration, pack

HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
# Our sidecar's peak-EWMA balancer; no proto of its own, so an empty Any of this type names it.
PEAK_EWMA_TYPE = "type.googleapis.com/agentmesh.v1.PeakEwmaLoadBalancer"
DEFAULT_CONNECT_TIMEOUT = 1.0


def _policy(name: str, config: any_pb2.Any) -> cluster_pb2.LoadBalancingPolicy.Policy:
    return cluster_pb2.LoadBalancingPolicy.Policy(
        typed_extension_config=extension_pb2.TypedExtensionConfig(name=name, typed_config=config)
    )


def _least_request() -> cluster_pb2.LoadBalancingPolicy.Policy:
    return _policy("envoy.load_balancing_policies.least_request", pack(least_request_pb2.LeastRequest()))


def _round_robin() -> cluster_pb2.LoadBalancingPolicy.Policy:
    return _policy("envoy.load_balancing_policies.round_robin", pack(round_robin_pb2.RoundRobin()))


def load_balancing(spec: TrafficPolicySpec | None) -> cluster_pb2.LoadBalancingPolicy:
    """The ordered balancer list for a cluster; the first one a consumer supports is used."""
    if spec is not None and spec.sticky is not None:
        ring = ring_hash_pb2.RingHash(hash_function=ring_hash_pb2.RingHash.XX_HASH)
        return cluster_pb2.LoadBalancingPolicy(
            policies=[_policy("envoy.load_balancing_policies.ring_hash", pack(ring))]
        )
    choice = (spec.load_balancing if spec is not None else None) or "least_request"
    if choice == "round_robin":
        policies = [_round_robin()]
    elif choice == "peak_ewma":
        peak_ewma = any_pb2.Any(type_url=PEAK_EWMA_TYPE)
        policies = [_policy("agentmesh.peak_ewma", peak_ewma), _least_request(), _round_robin()]
    else:
        policies = [_least_request(), _round_robin()]
    return cluster_pb2.LoadBalancingPolicy(policies=policies)


def outlier_detection(config: OutlierDetection) -> outlier_detection_pb2.OutlierDetection:
    """Envoy's OutlierDetection; success-rate ejection stays off unless configured (on by default in Envoy, gRPC)."""
    result = outlier_detection_pb2.OutlierDetection(
        consecutive_5xx=wrappers_pb2.UInt32Value(value=config.consecutive_errors),
        enforcing_consecutive_5xx=wrappers_pb2.UInt32Value(value=100),
        interval=duration(config.interval),
        base_ejection_time=duration(config.base_ejection_time),
        max_ejection_percent=wrappers_pb2.UInt32Value(value=config.max_ejection_percent),
        enforcing_success_rate=wrappers_pb2.UInt32Value(value=100 if config.success_rate else 0),
        enforcing_failure_percentage=wrappers_pb2.UInt32Value(value=100 if config.failure_percentage else 0),
    )
    if config.success_rate is not None:
        result.success_rate_minimum_hosts.value = config.success_rate.minimum_hosts
        result.success_rate_request_volume.value = config.success_rate.request_volume
        result.success_rate_stdev_factor.value = round(config.success_rate.stdev_factor * 1000)
    if config.failure_percentage is not None:
        result.failure_percentage_threshold.value = config.failure_percentage.threshold
        result.failure_percentage_minimum_hosts.value = config.failure_percentage.minimum_hosts
        result.failure_percentage_request_volume.value = config.failure_percentage.request_volume
    return result


def retry_budget(spec: TrafficPolicySpec | None) -> RetryBudget:
    """The target's budget: spec.retries.budget, else the default (20 %, 3 concurrent)."""
    if spec is not None and spec.retries is not None:
        return spec.retries.budget
    return RetryBudget()


def circuit_breakers(spec: TrafficPolicySpec | None) -> circuit_breaker_pb2.CircuitBreakers:
    budget = retry_budget(spec)
    thresholds = circuit_breaker_pb2.CircuitBreakers.Thresholds(
        priority=base_pb2.DEFAULT,
        retry_budget=circuit_breaker_pb2.CircuitBreakers.Thresholds.RetryBudget(
            budget_percent=percent_pb2.Percent(value=budget.percent),
            min_retry_concurrency=wrappers_pb2.UInt32Value(value=budget.min_concurrency),
        ),
    )
    breaker = spec.circuit_breaker if spec is not None else None
    if breaker is not None:
        if breaker.max_requests is not None:
            thresholds.max_requests.value = breaker.max_requests
        if breaker.max_pending_requests is not None:
            thresholds.max_pending_requests.value = breaker.max_pending_requests
        if breaker.max_connections is not None:
            thresholds.max_connections.value = breaker.max_connections
    return circuit_breaker_pb2.CircuitBreakers(thresholds=[thresholds])


def eds_cluster(name: str, spec: TrafficPolicySpec | None) -> cluster_pb2.Cluster:
    """An EDS cluster `name` (its ClusterLoadAssignment has the same name) shaped by `spec`."""
    http2 = http_protocol_options_pb2.HttpProtocolOptions(
        explicit_http_config=http_protocol_options_pb2.HttpProtocolOptions.ExplicitHttpConfig(
            http2_protocol_options=protocol_pb2.Http2ProtocolOptions()
        )
    )
    cluster = cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.EDS,
        eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(eds_config=ads_source(), service_name=name),
        connect_timeout=duration(DEFAULT_CONNECT_TIMEOUT),
        typed_extension_protocol_options={HTTP_PROTOCOL_OPTIONS: pack(http2)},
        load_balancing_policy=load_balancing(spec),
        circuit_breakers=circuit_breakers(spec),
    )
    if spec is not None and spec.outlier_detection is not None:
        cluster.outlier_detection.CopyFrom(outlier_detection(spec.outlier_detection))
    return cluster
