"""The SDS server over a real grpc.aio server on a unix socket, driven by a raw StreamSecrets client."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.secret.v3 import sds_pb2_grpc
from google.rpc import status_pb2
from prometheus_client import CollectorRegistry

from agentmesh.identity.delivery import IDENTITY_SECRET, ROOT_SECRET, SECRET_TYPE
from agentmesh.identity.material import IdentityMaterial
from agentmesh.identity.sds import SdsServer
from agentmesh.identity.spiffe import SpiffeId
from tests.pki import StaticSource, TestCa

GATEWAY = SpiffeId("agentmesh.local", "edge", "gateway")
WAIT = 5.0


class Envoyish:
    """One StreamSecrets stream: send requests, read responses in order (bounded waits)."""

    def __init__(self, stub: sds_pb2_grpc.SecretDiscoveryServiceStub) -> None:
        self.requests: asyncio.Queue[discovery_pb2.DiscoveryRequest | None] = asyncio.Queue()
        self.call = stub.StreamSecrets(self._requests())

    async def _requests(self) -> AsyncIterator[discovery_pb2.DiscoveryRequest]:
        while (request := await self.requests.get()) is not None:
            yield request

    def send(
        self, *names: str, nonce: str = "", version: str = "", error: str = "", type_url: str = SECRET_TYPE
    ) -> None:
        request = discovery_pb2.DiscoveryRequest(
            node=base_pb2.Node(id="gateway~test"),
            type_url=type_url,
            resource_names=names,
            response_nonce=nonce,
            version_info=version,
        )
        if error:
            request.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
        self.requests.put_nowait(request)

    async def receive(self) -> discovery_pb2.DiscoveryResponse:
        response = await asyncio.wait_for(self.call.read(), WAIT)
        assert isinstance(response, discovery_pb2.DiscoveryResponse), response
        return response

    def close(self) -> None:
        self.requests.put_nowait(None)
        self.call.cancel()


async def until(check: Callable[[], bool], what: str) -> None:
    for _ in range(200):
        if check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def secrets_of(response: discovery_pb2.DiscoveryResponse) -> dict[str, secret_pb2.Secret]:
    found = {}
    for packed in response.resources:
        message = secret_pb2.Secret()
        assert packed.Unpack(message)
        found[message.name] = message
    return found


@pytest.fixture
def ca() -> TestCa:
    return TestCa()


@pytest.fixture
async def served(tmp_path: Path, ca: TestCa) -> AsyncIterator[tuple[StaticSource, SdsServer, CollectorRegistry, str]]:
    source = StaticSource(ca.issue(GATEWAY, generation=1))
    registry = CollectorRegistry()
    sds = SdsServer(source, registry=registry)
    server = grpc.aio.server()
    sds.add_to_server(server)
    address = f"unix:{tmp_path / 'sds.sock'}"
    server.add_insecure_port(address)
    await server.start()
    yield source, sds, registry, address
    sds.close()
    await server.stop(0)


@pytest.fixture
async def envoy(served: tuple[StaticSource, SdsServer, CollectorRegistry, str]) -> AsyncIterator[Envoyish]:
    channel = grpc.aio.insecure_channel(served[3])
    client = Envoyish(sds_pb2_grpc.SecretDiscoveryServiceStub(channel))
    yield client
    client.close()
    await channel.close(None)


def metric(registry: CollectorRegistry, name: str) -> float:
    value = registry.get_sample_value(name)
    return 0.0 if value is None else value


async def test_serves_the_key_chain_and_roots_then_pushes_each_rotation(
    served: tuple[StaticSource, SdsServer, CollectorRegistry, str], envoy: Envoyish, ca: TestCa
) -> None:
    source, sds, registry, _ = served
    first = source.current()
    assert first is not None

    envoy.send(IDENTITY_SECRET, ROOT_SECRET)
    response = await envoy.receive()
    assert (response.type_url, response.version_info) == (SECRET_TYPE, "g1")
    secrets = secrets_of(response)
    assert secrets[IDENTITY_SECRET].tls_certificate.private_key.inline_bytes == first.private_key_pem
    assert secrets[IDENTITY_SECRET].tls_certificate.certificate_chain.inline_bytes == first.certificate_chain_pem
    assert secrets[ROOT_SECRET].validation_context.trusted_ca.inline_bytes == ca.bundle_pem

    envoy.send(IDENTITY_SECRET, ROOT_SECRET, nonce=response.nonce, version="g1")
    await until(lambda: [s.acked_version for s in sds.streams()] == ["g1"], "the ACK recorded")

    rotated = ca.issue(GATEWAY, generation=2)
    source.publish(rotated)
    pushed = await envoy.receive()
    assert pushed.version_info == "g2"
    assert secrets_of(pushed)[IDENTITY_SECRET].tls_certificate.private_key.inline_bytes == rotated.private_key_pem
    assert metric(registry, "agentmesh_sds_pushes_total") == 2
    assert metric(registry, "agentmesh_sds_streams") == 1


async def test_a_nack_is_counted_and_the_rejected_version_is_not_sent_again(
    served: tuple[StaticSource, SdsServer, CollectorRegistry, str],
    envoy: Envoyish,
    ca: TestCa,
    caplog: pytest.LogCaptureFixture,
) -> None:
    source, sds, registry, _ = served
    envoy.send(IDENTITY_SECRET)
    response = await envoy.receive()
    assert list(secrets_of(response)) == [IDENTITY_SECRET]

    envoy.send(IDENTITY_SECRET, nonce=response.nonce, version="", error="Failed to load private key")
    await until(lambda: metric(registry, "agentmesh_sds_nacks_total") == 1, "the NACK counted")
    assert [s.nack for s in sds.streams()] == ["Failed to load private key"]
    assert "Failed to load private key" in caplog.text

    # The next response is the next version: g1 is not sent again.
    source.publish(ca.issue(GATEWAY, generation=2))
    assert (await envoy.receive()).version_info == "g2"


async def test_stale_nonces_are_ignored_and_a_new_subscription_is_answered(
    served: tuple[StaticSource, SdsServer, CollectorRegistry, str], envoy: Envoyish
) -> None:
    envoy.send(IDENTITY_SECRET)
    first = await envoy.receive()
    envoy.send(ROOT_SECRET, nonce="not-a-nonce-we-sent")
    # Ignored: the next response answers the subscription below, not the stale request.
    envoy.send(IDENTITY_SECRET, ROOT_SECRET, nonce=first.nonce, version=first.version_info)
    both = await envoy.receive()
    assert set(secrets_of(both)) == {IDENTITY_SECRET, ROOT_SECRET}
    assert both.nonce != first.nonce


async def test_unknown_names_are_left_out_with_a_warning_and_no_names_means_both(
    served: tuple[StaticSource, SdsServer, CollectorRegistry, str], envoy: Envoyish, caplog: pytest.LogCaptureFixture
) -> None:
    envoy.send("spiffe://elsewhere", ROOT_SECRET)
    response = await envoy.receive()
    assert list(secrets_of(response)) == [ROOT_SECRET]
    assert "unknown secrets spiffe://elsewhere" in caplog.text

    envoy.send(nonce=response.nonce, version=response.version_info)
    assert set(secrets_of(await envoy.receive())) == {IDENTITY_SECRET, ROOT_SECRET}


async def test_waits_for_the_first_certificate(tmp_path: Path, ca: TestCa) -> None:
    source = StaticSource()
    sds = SdsServer(source)
    server = grpc.aio.server()
    sds.add_to_server(server)
    address = f"unix:{tmp_path / 'sds.sock'}"
    server.add_insecure_port(address)
    await server.start()
    async with grpc.aio.insecure_channel(address) as channel:
        stub = sds_pb2_grpc.SecretDiscoveryServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as fetched:
            await stub.FetchSecrets(discovery_pb2.DiscoveryRequest(resource_names=[IDENTITY_SECRET]), timeout=WAIT)
        assert fetched.value.code() == grpc.StatusCode.UNAVAILABLE
        client = Envoyish(stub)
        client.send(IDENTITY_SECRET)
        await until(lambda: [s.names for s in sds.streams()] == [frozenset({IDENTITY_SECRET})], "the subscription")
        source.publish(ca.issue(GATEWAY, generation=7))
        assert (await client.receive()).version_info == "g7"
        client.close()
    sds.close()
    await server.stop(0)


async def test_another_type_ends_the_stream_with_invalid_argument(
    served: tuple[StaticSource, SdsServer, CollectorRegistry, str], envoy: Envoyish
) -> None:
    envoy.send("x", type_url="type.googleapis.com/envoy.config.cluster.v3.Cluster")
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        await envoy.receive()
    assert ended.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "serves only type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret" in (
        ended.value.details() or ""
    )


async def test_fetch_secrets_answers_once(
    served: tuple[StaticSource, SdsServer, CollectorRegistry, str], ca: TestCa
) -> None:
    async with grpc.aio.insecure_channel(served[3]) as channel:
        stub = sds_pb2_grpc.SecretDiscoveryServiceStub(channel)
        response = await stub.FetchSecrets(
            discovery_pb2.DiscoveryRequest(type_url=SECRET_TYPE, resource_names=[ROOT_SECRET]), timeout=WAIT
        )
    assert response.version_info == "g1"
    assert secrets_of(response)[ROOT_SECRET].validation_context.trusted_ca.inline_bytes == ca.bundle_pem


def test_material_type_is_what_the_server_reads(ca: TestCa) -> None:
    assert isinstance(ca.issue(GATEWAY), IdentityMaterial)
