"""TLS in what the control plane serves: who a caller expects at the other end, and where its certificate comes from.

A Cluster `agent/<name>/<version>` whose registered instances all accept
mutual TLS (InstanceReport.mtls) gets an `envoy.transport_sockets.tls`
transport socket with an UpstreamTlsContext:

- `sni`: the target's DNS name (`<agent>.<team>.<trust-domain>`, SpiffeId.dns_name),
  which every mesh certificate carries next to its URI SAN;
- validation: the target's SPIFFE URI, exactly. `match_typed_subject_alt_names`
  (URI) is what Envoy and our sidecars read; gRPC's xDS client reads only the
  older `match_subject_alt_names`, so the default group carries both (Envoy
  ignores the older field when the typed one is set);
- `alpn_protocols: [h2]`: gRPC servers and clients insist on HTTP/2 over TLS.

Where the certificates come from depends on the consumer:

- default group (sidecars, proxyless gRPC clients): certificate-provider
  instances (gRFC A29), `tls_certificate_provider_instance` and
  `validation_context.ca_certificate_provider_instance`, both naming the
  bootstrap's CERTIFICATE_PROVIDER_INSTANCE (agentmesh/identity/delivery.py);
- gateway group (Envoy): SDS secrets IDENTITY_SECRET and ROOT_SECRET from
  the static cluster SDS_CLUSTER of Envoy's bootstrap (an identity agent).

The gateway's own listener can require client certificates
(`downstream_tls_sds`): any certificate of this trust domain, the peer's
SPIFFE ID then being what the RBAC filters match.
"""

from __future__ import annotations

from collections.abc import Mapping

from envoy.config.core.v3 import base_pb2, config_source_pb2, grpc_service_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2, tls_pb2
from envoy.type.matcher.v3 import string_pb2
from google.protobuf import wrappers_pb2

from agentmesh.identity.delivery import CERTIFICATE_PROVIDER_INSTANCE, IDENTITY_SECRET, ROOT_SECRET, SDS_CLUSTER
from agentmesh.identity.spiffe import SCHEME, SpiffeId
from control_plane.translate._xds import agent_cluster_name, pack
from control_plane.translate.view import AgentView

TLS_TRANSPORT_SOCKET = "envoy.transport_sockets.tls"
UPSTREAM_ALPN = ("h2",)
DOWNSTREAM_ALPN = ("h2", "http/1.1")


def cluster_peers(agents: Mapping[str, AgentView], trust_domain: str, notes: list[str]) -> dict[str, SpiffeId]:
    """cluster name -> the SPIFFE ID its endpoints must prove, for every version cluster to reach over mTLS.

    A version qualifies when it has instances and every one reports mTLS.
    An instance that reported a different SPIFFE ID than the one expected is
    noted: calls to it will fail the handshake.
    """
    peers: dict[str, SpiffeId] = {}
    for agent in agents.values():
        for version in sorted(agent.versions):
            instances = agent.versions[version]
            if not instances or not all(i.mtls for i in instances):
                continue
            try:
                peer = SpiffeId(trust_domain, agent.team, agent.name)
            except ValueError as exc:
                notes.append(f"{agent.name}/{version}: stays plaintext: no SPIFFE ID for it ({exc})")
                break
            name = agent_cluster_name(agent.name, version)
            peers[name] = peer
            for instance in instances:
                if instance.spiffe_id and instance.spiffe_id != peer.uri:
                    notes.append(
                        f"{name}: instance {instance.address} reports {instance.spiffe_id}, "
                        f"but callers expect {peer.uri}: its handshakes will fail"
                    )
    return peers


def _uri_matcher(matcher: string_pb2.StringMatcher) -> common_pb2.SubjectAltNameMatcher:
    return common_pb2.SubjectAltNameMatcher(san_type=common_pb2.SubjectAltNameMatcher.URI, matcher=matcher)


def _provider(certificate_name: str) -> common_pb2.CertificateProviderPluginInstance:
    return common_pb2.CertificateProviderPluginInstance(
        instance_name=CERTIFICATE_PROVIDER_INSTANCE, certificate_name=certificate_name
    )


def sds_config() -> config_source_pb2.ConfigSource:
    """SDS over gRPC from the bootstrap's static cluster SDS_CLUSTER."""
    return config_source_pb2.ConfigSource(
        resource_api_version=config_source_pb2.V3,
        api_config_source=config_source_pb2.ApiConfigSource(
            api_type=config_source_pb2.ApiConfigSource.GRPC,
            transport_api_version=config_source_pb2.V3,
            grpc_services=[
                grpc_service_pb2.GrpcService(
                    envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=SDS_CLUSTER)
                )
            ],
        ),
    )


def _sds_secret(name: str) -> secret_pb2.SdsSecretConfig:
    return secret_pb2.SdsSecretConfig(name=name, sds_config=sds_config())


def _transport_socket(context: tls_pb2.UpstreamTlsContext | tls_pb2.DownstreamTlsContext) -> base_pb2.TransportSocket:
    return base_pb2.TransportSocket(name=TLS_TRANSPORT_SOCKET, typed_config=pack(context))


def upstream_tls_provider(peer: SpiffeId) -> base_pb2.TransportSocket:
    """Default group: mTLS to `peer` with certificates from the bootstrap's certificate provider instance."""
    exact = string_pb2.StringMatcher(exact=peer.uri)
    context = tls_pb2.UpstreamTlsContext(
        sni=peer.dns_name,
        common_tls_context=tls_pb2.CommonTlsContext(
            tls_certificate_provider_instance=_provider(IDENTITY_SECRET),
            validation_context=common_pb2.CertificateValidationContext(
                ca_certificate_provider_instance=_provider(ROOT_SECRET),
                match_typed_subject_alt_names=[_uri_matcher(exact)],
                match_subject_alt_names=[exact],
            ),
            alpn_protocols=UPSTREAM_ALPN,
        ),
    )
    return _transport_socket(context)


def upstream_tls_sds(peer: SpiffeId) -> base_pb2.TransportSocket:
    """Gateway group: mTLS to `peer` with Envoy's certificate and roots from SDS."""
    context = tls_pb2.UpstreamTlsContext(
        sni=peer.dns_name,
        common_tls_context=tls_pb2.CommonTlsContext(
            tls_certificate_sds_secret_configs=[_sds_secret(IDENTITY_SECRET)],
            combined_validation_context=tls_pb2.CommonTlsContext.CombinedCertificateValidationContext(
                default_validation_context=common_pb2.CertificateValidationContext(
                    match_typed_subject_alt_names=[_uri_matcher(string_pb2.StringMatcher(exact=peer.uri))]
                ),
                validation_context_sds_secret_config=_sds_secret(ROOT_SECRET),
            ),
            alpn_protocols=UPSTREAM_ALPN,
        ),
    )
    return _transport_socket(context)


def downstream_tls_sds(trust_domain: str) -> base_pb2.TransportSocket:
    """The gateway listener's side: a client certificate of `trust_domain` is required; Envoy's own comes from SDS."""
    context = tls_pb2.DownstreamTlsContext(
        require_client_certificate=wrappers_pb2.BoolValue(value=True),
        common_tls_context=tls_pb2.CommonTlsContext(
            tls_certificate_sds_secret_configs=[_sds_secret(IDENTITY_SECRET)],
            combined_validation_context=tls_pb2.CommonTlsContext.CombinedCertificateValidationContext(
                default_validation_context=common_pb2.CertificateValidationContext(
                    match_typed_subject_alt_names=[
                        _uri_matcher(string_pb2.StringMatcher(prefix=f"{SCHEME}{trust_domain}/"))
                    ]
                ),
                validation_context_sds_secret_config=_sds_secret(ROOT_SECRET),
            ),
            alpn_protocols=DOWNSTREAM_ALPN,
        ),
    )
    return _transport_socket(context)
