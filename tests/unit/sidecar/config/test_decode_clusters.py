"""CDS decoding: EDS over ADS, balancer choice, Envoy defaults, outlier detection, circuit breakers, refusals."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2, outlier_detection_pb2
from envoy.config.core.v3 import base_pb2, config_source_pb2, extension_pb2
from envoy.extensions.load_balancing_policies.least_request.v3 import least_request_pb2
from envoy.extensions.load_balancing_policies.maglev.v3 import maglev_pb2
from envoy.extensions.load_balancing_policies.ring_hash.v3 import ring_hash_pb2
from envoy.extensions.load_balancing_policies.round_robin.v3 import round_robin_pb2
from envoy.extensions.transport_sockets.raw_buffer.v3 import raw_buffer_pb2
from envoy.type.v3 import percent_pb2
from google.protobuf import any_pb2, duration_pb2, struct_pb2, wrappers_pb2
from google.protobuf.message import Message

from control_plane.policy.model import TrafficPolicySpec
from control_plane.translate.clusters import eds_cluster
from sidecar.config.decode import DecodeError
from sidecar.config.decode.clusters import PEAK_EWMA_TYPE, decode_cluster
from sidecar.config.snapshot import CircuitBreakers, OutlierDetection

ADS = config_source_pb2.ConfigSource(ads=config_source_pb2.AggregatedConfigSource())


def pack(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def policy(config: any_pb2.Any) -> cluster_pb2.LoadBalancingPolicy.Policy:
    return cluster_pb2.LoadBalancingPolicy.Policy(
        typed_extension_config=extension_pb2.TypedExtensionConfig(name="p", typed_config=config)
    )


def cluster(**fields: object) -> cluster_pb2.Cluster:
    base = cluster_pb2.Cluster(
        name="agent/researcher/v1",
        type=cluster_pb2.Cluster.EDS,
        eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(eds_config=ADS),
    )
    base.MergeFrom(cluster_pb2.Cluster(**fields))
    return base


def test_envoy_defaults_for_a_bare_eds_cluster() -> None:
    decoded = decode_cluster(cluster())
    assert decoded.service_name == "agent/researcher/v1"
    assert decoded.cluster.name == "agent/researcher/v1"
    assert decoded.cluster.lb_policy == "round_robin"  # lb_policy enum default, as Envoy
    assert decoded.cluster.connect_timeout == 5.0
    assert decoded.cluster.outlier is None
    assert decoded.cluster.circuit_breakers == CircuitBreakers(
        max_requests=1024, max_pending_requests=1024, max_retries=3, retry_budget_percent=None
    )


def test_service_name_and_self_config_source() -> None:
    named = cluster()
    named.eds_cluster_config.service_name = "shared"
    named.eds_cluster_config.eds_config.CopyFrom(
        config_source_pb2.ConfigSource(self=config_source_pb2.SelfConfigSource())
    )
    assert decode_cluster(named).service_name == "shared"


def test_translated_cluster_with_a_policy() -> None:
    spec = TrafficPolicySpec.model_validate(
        {
            "target": "researcher",
            "load_balancing": "peak_ewma",
            "outlier_detection": {
                "consecutive_errors": 3,
                "interval": "5s",
                "base_ejection_time": "10s",
                "max_ejection_percent": 50,
                "success_rate": {"minimum_hosts": 3, "request_volume": 20, "stdev_factor": 1.5},
                "failure_percentage": {"threshold": 60, "minimum_hosts": 2, "request_volume": 10},
            },
            "circuit_breaker": {"max_requests": 100, "max_pending_requests": 50},
            "retries": {"attempts": 2, "budget": {"percent": 25, "min_concurrency": 5}},
        }
    )
    decoded = decode_cluster(eds_cluster("agent/researcher/v1", spec)).cluster
    assert decoded.lb_policy == "peak_ewma"
    assert decoded.connect_timeout == 1.0
    assert decoded.outlier == OutlierDetection(
        consecutive_errors=3,
        interval=5.0,
        base_ejection_time=10.0,
        max_ejection_time=300.0,
        max_ejection_percent=50,
        success_rate_minimum_hosts=3,
        success_rate_request_volume=20,
        success_rate_stdev_factor=1500,
        enforcing_consecutive_errors=100,
        enforcing_success_rate=100,
        failure_percentage_threshold=60,
        failure_percentage_minimum_hosts=2,
        failure_percentage_request_volume=10,
        enforcing_failure_percentage=100,
    )
    assert decoded.circuit_breakers == CircuitBreakers(
        max_requests=100, max_pending_requests=50, max_retries=3, retry_budget_percent=25.0, min_retry_concurrency=5
    )
    assert decode_cluster(eds_cluster("c", None)).cluster.lb_policy == "least_request"
    round_robin = TrafficPolicySpec.model_validate({"target": "researcher", "load_balancing": "round_robin"})
    assert decode_cluster(eds_cluster("c", round_robin)).cluster.lb_policy == "round_robin"


def test_first_supported_policy_wins() -> None:
    unknown = any_pb2.Any(type_url="type.googleapis.com/example.Custom")
    listed = cluster(
        load_balancing_policy=cluster_pb2.LoadBalancingPolicy(
            policies=[
                policy(unknown),
                policy(pack(round_robin_pb2.RoundRobin())),
                policy(pack(least_request_pb2.LeastRequest())),
            ]
        )
    )
    assert decode_cluster(listed).cluster.lb_policy == "round_robin"
    ewma = cluster(
        load_balancing_policy=cluster_pb2.LoadBalancingPolicy(policies=[policy(any_pb2.Any(type_url=PEAK_EWMA_TYPE))])
    )
    assert decode_cluster(ewma).cluster.lb_policy == "peak_ewma"


def test_hash_balancers_fall_back_to_the_lb_policy_enum() -> None:
    sticky = TrafficPolicySpec.model_validate({"target": "researcher", "sticky": {"header": "x-session"}})
    assert decode_cluster(eds_cluster("c", sticky)).cluster.lb_policy == "round_robin"
    maglev = cluster(
        lb_policy=cluster_pb2.Cluster.LEAST_REQUEST,
        load_balancing_policy=cluster_pb2.LoadBalancingPolicy(
            policies=[policy(pack(maglev_pb2.Maglev())), policy(pack(ring_hash_pb2.RingHash()))]
        ),
    )
    assert decode_cluster(maglev).cluster.lb_policy == "least_request"


def test_outlier_defaults_and_clamping() -> None:
    decoded = decode_cluster(cluster(outlier_detection=outlier_detection_pb2.OutlierDetection())).cluster.outlier
    assert decoded == OutlierDetection(enforcing_success_rate=100)
    long_base = outlier_detection_pb2.OutlierDetection(
        base_ejection_time=duration_pb2.Duration(seconds=600), max_ejection_percent=wrappers_pb2.UInt32Value(value=250)
    )
    decoded = decode_cluster(cluster(outlier_detection=long_base)).cluster.outlier
    assert decoded is not None
    assert (decoded.max_ejection_time, decoded.max_ejection_percent) == (600.0, 100)


def test_circuit_breakers_use_the_default_priority_and_budget_defaults() -> None:
    thresholds = [
        circuit_breaker_pb2.CircuitBreakers.Thresholds(
            priority=base_pb2.HIGH, max_requests=wrappers_pb2.UInt32Value(value=1)
        ),
        circuit_breaker_pb2.CircuitBreakers.Thresholds(
            max_retries=wrappers_pb2.UInt32Value(value=7),
            retry_budget=circuit_breaker_pb2.CircuitBreakers.Thresholds.RetryBudget(),
        ),
        circuit_breaker_pb2.CircuitBreakers.Thresholds(max_requests=wrappers_pb2.UInt32Value(value=2)),
    ]
    decoded = decode_cluster(cluster(circuit_breakers=circuit_breaker_pb2.CircuitBreakers(thresholds=thresholds)))
    assert decoded.cluster.circuit_breakers == CircuitBreakers(
        max_requests=1024, max_pending_requests=1024, max_retries=7, retry_budget_percent=20.0, min_retry_concurrency=3
    )


def test_plaintext_transport_socket_is_fine() -> None:
    socket = base_pb2.TransportSocket(
        name="envoy.transport_sockets.raw_buffer", typed_config=pack(raw_buffer_pb2.RawBuffer())
    )
    assert decode_cluster(cluster(transport_socket=socket)).cluster.name == "agent/researcher/v1"


def _set(build: Callable[[cluster_pb2.Cluster], object]) -> Callable[[], cluster_pb2.Cluster]:
    def make() -> cluster_pb2.Cluster:
        result = cluster()
        build(result)
        return result

    return make


REFUSALS: list[tuple[str, Callable[[], cluster_pb2.Cluster], str]] = [
    (
        "static",
        lambda: cluster_pb2.Cluster(name="c", type=cluster_pb2.Cluster.STATIC),
        "type STATIC is not supported: only EDS clusters are",
    ),
    ("unset type", lambda: cluster_pb2.Cluster(name="c"), "type STATIC is not supported: only EDS clusters are"),
    (
        "dns",
        lambda: cluster_pb2.Cluster(name="c", type=cluster_pb2.Cluster.STRICT_DNS),
        "type STRICT_DNS is not supported: only EDS clusters are",
    ),
    (
        "custom type",
        lambda: cluster_pb2.Cluster(
            name="c", cluster_type=cluster_pb2.Cluster.CustomClusterType(name="envoy.clusters.aggregate")
        ),
        "cluster_type envoy.clusters.aggregate is not supported: only EDS clusters are",
    ),
    (
        "eds without a config source",
        lambda: cluster_pb2.Cluster(name="c", type=cluster_pb2.Cluster.EDS),
        "eds_cluster_config.eds_config is unset: endpoints must come over ADS",
    ),
    (
        "eds from a file",
        _set(lambda c: c.eds_cluster_config.eds_config.CopyFrom(config_source_pb2.ConfigSource(path="/etc/eds.yaml"))),
        "eds_cluster_config.eds_config is path: endpoints must come over ADS",
    ),
    ("subsets", _set(lambda c: c.lb_subset_config.SetInParent()), "lb_subset_config is not supported"),
    (
        "tls",
        _set(
            lambda c: c.transport_socket.CopyFrom(
                base_pb2.TransportSocket(name="tls", typed_config=pack(struct_pb2.Struct()))
            )
        ),
        "transport_socket: type.googleapis.com/google.protobuf.Struct is not supported "
        "(only raw_buffer and UpstreamTlsContext)",
    ),
    (
        "transport socket matches",
        _set(lambda c: c.transport_socket_matches.add(name="m")),
        "transport_socket_matches is not supported: use transport_socket",
    ),
    (
        "zero connect timeout",
        _set(lambda c: c.connect_timeout.CopyFrom(duration_pb2.Duration())),
        "connect_timeout must be greater than 0",
    ),
    (
        "unknown policies",
        _set(
            lambda c: c.load_balancing_policy.policies.append(
                policy(any_pb2.Any(type_url="type.googleapis.com/x.Custom"))
            )
        ),
        "load_balancing_policy: none of the policies is supported (type.googleapis.com/x.Custom)",
    ),
    (
        "cluster_provided",
        _set(lambda c: setattr(c, "lb_policy", cluster_pb2.Cluster.CLUSTER_PROVIDED)),
        "lb_policy CLUSTER_PROVIDED is not supported",
    ),
    (
        "zero interval",
        _set(lambda c: c.outlier_detection.interval.CopyFrom(duration_pb2.Duration())),
        "outlier_detection.interval must be greater than 0",
    ),
    (
        "max ejection below base",
        _set(
            lambda c: c.outlier_detection.CopyFrom(
                outlier_detection_pb2.OutlierDetection(
                    base_ejection_time=duration_pb2.Duration(seconds=60),
                    max_ejection_time=duration_pb2.Duration(seconds=30),
                )
            )
        ),
        "outlier_detection.max_ejection_time (30s) is less than base_ejection_time (60s)",
    ),
    (
        "enforcing over 100",
        _set(lambda c: c.outlier_detection.enforcing_success_rate.CopyFrom(wrappers_pb2.UInt32Value(value=101))),
        "outlier_detection: enforcing_success_rate is 101, more than 100 %",
    ),
    (
        "budget over 100",
        _set(
            lambda c: c.circuit_breakers.thresholds.add().retry_budget.budget_percent.CopyFrom(
                percent_pb2.Percent(value=150)
            )
        ),
        "circuit_breakers.thresholds.retry_budget.budget_percent is 150, not 0..100",
    ),
]


@pytest.mark.parametrize(("build", "message"), [(b, m) for _, b, m in REFUSALS], ids=[n for n, _, _ in REFUSALS])
def test_refusals_name_the_field(build: Callable[[], cluster_pb2.Cluster], message: str) -> None:
    with pytest.raises(DecodeError) as caught:
        decode_cluster(build())
    assert str(caught.value) == message
