"""CDS decoding of a cluster's UpstreamTlsContext: the SPIFFE ID the upstream must prove, or a NACK saying where."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2, config_source_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2
from envoy.type.matcher.v3 import string_pb2
from google.protobuf import any_pb2

from agentmesh.identity.spiffe import SpiffeId
from sidecar.config.decode import DecodeError
from sidecar.config.decode.clusters import decode_cluster
from sidecar.config.snapshot import UpstreamTls

RESEARCHER = SpiffeId("agentmesh.local", "research", "researcher")
WRITER = SpiffeId("agentmesh.local", "content", "writer")
URI = common_pb2.SubjectAltNameMatcher.URI
DNS = common_pb2.SubjectAltNameMatcher.DNS
ADS = config_source_pb2.ConfigSource(ads=config_source_pb2.AggregatedConfigSource())
AT = "transport_socket.typed_config.common_tls_context"


def _cluster(
    context: tls_pb2.UpstreamTlsContext | None = None, *, typed: any_pb2.Any | None = None
) -> cluster_pb2.Cluster:
    cluster = cluster_pb2.Cluster(
        name="agent/researcher/v1",
        type=cluster_pb2.Cluster.EDS,
        eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(eds_config=ADS),
    )
    if context is not None:
        typed = any_pb2.Any()
        typed.Pack(context)
    if typed is not None:
        cluster.transport_socket.CopyFrom(
            base_pb2.TransportSocket(name="envoy.transport_sockets.tls", typed_config=typed)
        )
    return cluster


def _san(value: str, san_type: int = URI, **matcher: object) -> common_pb2.SubjectAltNameMatcher:
    return common_pb2.SubjectAltNameMatcher(
        san_type=san_type,
        matcher=string_pb2.StringMatcher(exact=value, **matcher),
    )


def _context(
    *sans: common_pb2.SubjectAltNameMatcher, sni: str = RESEARCHER.dns_name, combined: bool = False
) -> tls_pb2.UpstreamTlsContext:
    validation = common_pb2.CertificateValidationContext(match_typed_subject_alt_names=list(sans))
    if combined:
        common = tls_pb2.CommonTlsContext(
            combined_validation_context=tls_pb2.CommonTlsContext.CombinedCertificateValidationContext(
                default_validation_context=validation
            )
        )
    else:
        common = tls_pb2.CommonTlsContext(validation_context=validation)
    return tls_pb2.UpstreamTlsContext(sni=sni, common_tls_context=common)


def test_a_cluster_without_transport_socket_is_plaintext() -> None:
    assert decode_cluster(_cluster()).cluster.tls is None


@pytest.mark.parametrize("combined", [False, True])
def test_the_expected_identity_comes_from_the_uri_san_matcher(combined: bool) -> None:
    context = _context(_san(RESEARCHER.dns_name, DNS), _san(RESEARCHER.uri), combined=combined)
    tls = decode_cluster(_cluster(context)).cluster.tls
    assert tls == UpstreamTls((RESEARCHER,), RESEARCHER.dns_name)


def test_what_the_control_plane_emits_for_sidecars_and_for_envoy_decodes_to_the_target() -> None:
    tls_module = pytest.importorskip("control_plane.translate.tls")
    for socket in (tls_module.upstream_tls_provider(RESEARCHER), tls_module.upstream_tls_sds(RESEARCHER)):
        cluster = _cluster()
        cluster.transport_socket.CopyFrom(socket)
        assert decode_cluster(cluster).cluster.tls == UpstreamTls((RESEARCHER,), RESEARCHER.dns_name)


def test_the_older_untyped_matchers_count_only_without_typed_ones() -> None:
    context = _context(_san(RESEARCHER.uri))
    context.common_tls_context.validation_context.match_subject_alt_names.append(
        string_pb2.StringMatcher(exact=WRITER.uri)
    )
    assert decode_cluster(_cluster(context)).cluster.tls == UpstreamTls((RESEARCHER,), RESEARCHER.dns_name)
    untyped = _context(sni="")
    untyped.common_tls_context.validation_context.match_subject_alt_names.append(
        string_pb2.StringMatcher(exact=WRITER.uri)
    )
    assert decode_cluster(_cluster(untyped)).cluster.tls == UpstreamTls((WRITER,), "")


def test_several_identities_are_kept_in_order() -> None:
    context = _context(_san(RESEARCHER.uri), _san(WRITER.uri), sni="")
    assert decode_cluster(_cluster(context)).cluster.tls == UpstreamTls((RESEARCHER, WRITER), "")


def _garbage() -> cluster_pb2.Cluster:
    return _cluster(
        typed=any_pb2.Any(
            type_url="type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            value=b"\xff\xff",
        )
    )


REFUSALS: list[tuple[str, Callable[[], cluster_pb2.Cluster], str]] = [
    (
        "no validation",
        lambda: _cluster(tls_pb2.UpstreamTlsContext(sni=RESEARCHER.dns_name)),
        f"{AT}: no validation_context or combined_validation_context",
    ),
    (
        "no uri matcher",
        lambda: _cluster(_context(_san(RESEARCHER.dns_name, DNS))),
        f"{AT}.validation_context.match_typed_subject_alt_names: no URI matcher names the SPIFFE ID to expect",
    ),
    (
        "prefix matcher",
        lambda: _cluster(
            _context(
                common_pb2.SubjectAltNameMatcher(
                    san_type=URI, matcher=string_pb2.StringMatcher(prefix="spiffe://agentmesh.local/")
                )
            )
        ),
        f"{AT}.validation_context.match_typed_subject_alt_names[0].matcher: "
        "only a case-sensitive exact match of a SPIFFE ID is supported, not prefix",
    ),
    (
        "ignore case",
        lambda: _cluster(_context(_san(RESEARCHER.uri, ignore_case=True), combined=True)),
        f"{AT}.combined_validation_context.default_validation_context.match_typed_subject_alt_names[0].matcher: "
        "only a case-sensitive exact match of a SPIFFE ID is supported, not exact with ignore_case",
    ),
    (
        "not a spiffe id",
        lambda: _cluster(_context(_san("https://researcher"))),
        f"{AT}.validation_context.match_typed_subject_alt_names[0].matcher.exact: "
        "'https://researcher' is not a SPIFFE ID",
    ),
    (
        "sni of another agent",
        lambda: _cluster(_context(_san(RESEARCHER.uri), sni=WRITER.dns_name)),
        "transport_socket.typed_config.sni: 'writer.content.agentmesh.local' is not the DNS name of an expected "
        "identity (researcher.research.agentmesh.local)",
    ),
    ("unparsable context", _garbage, "transport_socket.typed_config: cannot parse the UpstreamTlsContext"),
]


@pytest.mark.parametrize(("build", "message"), [(b, m) for _, b, m in REFUSALS], ids=[n for n, _, _ in REFUSALS])
def test_refusals_name_the_field(build: Callable[[], cluster_pb2.Cluster], message: str) -> None:
    with pytest.raises(DecodeError) as error:
        decode_cluster(build())
    assert str(error.value).startswith(message)
