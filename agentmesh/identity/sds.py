"""SDS: hands the workload's current certificate to Envoy (`envoy.service.secret.v3.SecretDiscoveryService`).

Envoy's TLS contexts in the gateway snapshot name two secrets
(agentmesh/identity/delivery.py): IDENTITY_SECRET (`default`, a
`tls_certificate` with the private key and the chain, leaf first) and
ROOT_SECRET (`ROOTCA`, a `validation_context` with the trust bundle). This
server answers them from an `IdentitySource` (the identity agent's Rotator)
and pushes a new version to every stream when the source rotates, so Envoy
uses the new certificate for new connections without a restart.

Protocol (state of the world, per stream, like the control plane's ADS):

- a request without a response nonce, or naming other resources than the
  last one, is a (re)subscription: it is answered with the named secrets
  as soon as the source has material;
- a request carrying the last nonce is an ACK, or a NACK when `error_detail`
  is set: logged, counted, and the rejected version is not sent again;
  the next rotation sends a new one;
- a request with another nonce is stale and ignored;
- an empty `resource_names` list means both secrets; a name this server
  does not know is logged and left out (Envoy keeps waiting for it);
- a type URL other than Secret ends the stream with INVALID_ARGUMENT.

`FetchSecrets` answers once with the current material. Delta SDS is not
served (UNIMPLEMENTED): Envoy's SDS config here is state of the world.

The private key crosses this stream, so the identity agent listens on a unix
socket or loopback only (delivery.check_sds_address). Versions are the
material's generation, so a restarted identity agent's first push is new to
Envoy whenever the certificate is.

Metrics (on the registry passed in): `agentmesh_sds_streams` (gauge),
`agentmesh_sds_pushes_total`, `agentmesh_sds_nacks_total`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.secret.v3 import sds_pb2_grpc
from google.protobuf import any_pb2
from prometheus_client import CollectorRegistry, Counter, Gauge

from agentmesh.identity.delivery import IDENTITY_SECRET, ROOT_SECRET, SECRET_TYPE
from agentmesh.identity.material import IdentityMaterial, IdentitySource

log = logging.getLogger("agentmesh.identity.sds")

KNOWN_SECRETS = (IDENTITY_SECRET, ROOT_SECRET)
SDS_SERVICE = "envoy.service.secret.v3.SecretDiscoveryService"


def secret(name: str, material: IdentityMaterial) -> secret_pb2.Secret:
    """The SDS Secret `name` (IDENTITY_SECRET or ROOT_SECRET) built from `material`; KeyError for any other name."""
    if name == IDENTITY_SECRET:
        return secret_pb2.Secret(
            name=name,
            tls_certificate=common_pb2.TlsCertificate(
                certificate_chain=base_pb2.DataSource(inline_bytes=material.certificate_chain_pem),
                private_key=base_pb2.DataSource(inline_bytes=material.private_key_pem),
            ),
        )
    if name == ROOT_SECRET:
        return secret_pb2.Secret(
            name=name,
            validation_context=common_pb2.CertificateValidationContext(
                trusted_ca=base_pb2.DataSource(inline_bytes=material.trust_bundle_pem)
            ),
        )
    raise KeyError(name)


def version_of(material: IdentityMaterial) -> str:
    return f"g{material.generation}"


@dataclass(eq=False)
class StreamState:
    """One Envoy's SDS stream: what it asked for, what was sent, ACKed or NACKed."""

    peer: str
    node_id: str = ""
    names: frozenset[str] | None = None
    sent_version: str = ""
    sent_nonce: str = ""
    acked_version: str = ""
    nack: str = ""
    # Set when something may need sending: a (re)subscription or new material.
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    # The version last sent for the current subscription ("" after a resubscription: send again).
    answered: str = ""


class SdsServer(sds_pb2_grpc.SecretDiscoveryServiceServicer):
    """Serves IDENTITY_SECRET and ROOT_SECRET from `source`; `close()` unsubscribes and ends the streams."""

    def __init__(self, source: IdentitySource, *, registry: CollectorRegistry | None = None) -> None:
        self._source = source
        self._streams: set[StreamState] = set()
        self._nonces = itertools.count(1)
        self._closed = asyncio.Event()
        registry = registry if registry is not None else CollectorRegistry()
        self._stream_gauge = Gauge(
            "agentmesh_sds_streams", "Open SDS streams (Envoys fetching secrets).", registry=registry
        )
        self._pushes = Counter("agentmesh_sds_pushes_total", "SDS responses sent.", registry=registry)
        self._nacks = Counter(
            "agentmesh_sds_nacks_total", "SDS responses a consumer rejected (error_detail set).", registry=registry
        )
        self._unsubscribe = source.subscribe(self._rotated)

    def add_to_server(self, server: grpc.aio.Server) -> None:
        sds_pb2_grpc.add_SecretDiscoveryServiceServicer_to_server(self, server)

    def streams(self) -> list[StreamState]:
        """The open streams (for status output and tests)."""
        return sorted(self._streams, key=lambda s: s.peer)

    def close(self) -> None:
        self._unsubscribe()
        self._closed.set()
        for stream in self._streams:
            stream.wake.set()

    def _rotated(self, material: IdentityMaterial) -> None:
        log.info("new identity material to push", extra={"generation": material.generation})
        for stream in self._streams:
            stream.wake.set()

    async def StreamSecrets(
        self, request_iterator: AsyncIterator[discovery_pb2.DiscoveryRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[discovery_pb2.DiscoveryResponse]:
        stream = StreamState(peer=context.peer())
        self._streams.add(stream)
        self._stream_gauge.inc()
        problems: asyncio.Queue[str] = asyncio.Queue()
        reader = asyncio.ensure_future(self._read(request_iterator, stream, problems))
        try:
            while not self._closed.is_set():
                await stream.wake.wait()
                stream.wake.clear()
                if not problems.empty():
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problems.get_nowait())
                if reader.done():
                    break
                response = self._response(stream)
                if response is not None:
                    self._pushes.inc()
                    yield response
        finally:
            reader.cancel()
            self._streams.discard(stream)
            self._stream_gauge.dec()

    async def FetchSecrets(
        self, request: discovery_pb2.DiscoveryRequest, context: grpc.aio.ServicerContext
    ) -> discovery_pb2.DiscoveryResponse:
        if request.type_url and request.type_url != SECRET_TYPE:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _type_error(request.type_url))
        material = self._source.current()
        if material is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "no certificate yet: the identity agent is enrolling")
            raise AssertionError("unreachable")
        names = _selected(request.resource_names, context.peer())
        return discovery_pb2.DiscoveryResponse(
            version_info=version_of(material),
            type_url=SECRET_TYPE,
            resources=[_pack(secret(name, material)) for name in names],
            nonce=str(next(self._nonces)),
        )

    async def _read(
        self,
        requests: AsyncIterator[discovery_pb2.DiscoveryRequest],
        stream: StreamState,
        problems: asyncio.Queue[str],
    ) -> None:
        try:
            async for request in requests:
                if request.node.id:
                    stream.node_id = request.node.id
                if request.type_url and request.type_url != SECRET_TYPE:
                    problems.put_nowait(_type_error(request.type_url))
                    return
                self._on_request(stream, request)
        except (asyncio.CancelledError, grpc.aio.AioRpcError):
            pass
        finally:
            stream.wake.set()

    def _on_request(self, stream: StreamState, request: discovery_pb2.DiscoveryRequest) -> None:
        names = frozenset(_selected(request.resource_names, stream.node_id or stream.peer))
        nonce = request.response_nonce
        if nonce and nonce != stream.sent_nonce:
            log.debug("stale SDS request ignored", extra={"node_id": stream.node_id, "nonce": nonce})
            return
        if nonce and request.HasField("error_detail"):
            stream.nack = request.error_detail.message
            self._nacks.inc()
            log.warning(
                "SDS secrets rejected by the consumer: %s",
                request.error_detail.message,
                extra={"node_id": stream.node_id, "version": stream.sent_version},
            )
        elif nonce:
            stream.acked_version = request.version_info
            stream.nack = ""
        if names != stream.names:
            stream.names = names
            stream.answered = ""
            stream.wake.set()

    def _response(self, stream: StreamState) -> discovery_pb2.DiscoveryResponse | None:
        material = self._source.current()
        if material is None or stream.names is None:
            return None
        version = version_of(material)
        if stream.answered == version:
            return None
        stream.answered = version
        stream.sent_version = version
        stream.sent_nonce = str(next(self._nonces))
        log.info(
            "pushing secrets",
            extra={"node_id": stream.node_id, "version": version, "secrets": ",".join(sorted(stream.names))},
        )
        return discovery_pb2.DiscoveryResponse(
            version_info=version,
            type_url=SECRET_TYPE,
            resources=[_pack(secret(name, material)) for name in sorted(stream.names)],
            nonce=stream.sent_nonce,
        )


def _selected(names: Iterable[str], who: str) -> list[str]:
    """The known secrets among `names` (both when empty); unknown ones are logged and dropped."""
    asked = list(dict.fromkeys(names)) or list(KNOWN_SECRETS)
    unknown = [name for name in asked if name not in KNOWN_SECRETS]
    if unknown:
        log.warning(
            "SDS request for unknown secrets %s ignored; this server serves %s",
            ", ".join(unknown),
            " and ".join(KNOWN_SECRETS),
            extra={"peer": who},
        )
    return [name for name in asked if name in KNOWN_SECRETS]


def _type_error(type_url: str) -> str:
    return f"type_url {type_url!r} is not served here: this SDS server serves only {SECRET_TYPE}"


def _pack(message: secret_pb2.Secret) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed
