"""The sidecar's mTLS transport pieces on real loopback sockets, with certificates made in the test.

The listener credentials (sidecar/identity.py), the permissive front
(sidecar/inbound/detect.py) and the channel pool (sidecar/outbound/targets.py)
against a small grpc.aio server: who is admitted, who is refused in the
handshake (UNAVAILABLE), what the server learns of the caller, how rotation
treats connections and calls already open.
"""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from agentmesh.identity.material import IdentityMaterial
from agentmesh.identity.spiffe import SpiffeId
from sidecar.config.bootstrap import AgentIdentity
from sidecar.errors import NoRoute
from sidecar.identity import SidecarIdentity, channel_credentials
from sidecar.inbound.detect import PermissiveFront
from sidecar.outbound.targets import ChannelPool
from sidecar.stats import SidecarStats
from tests.pki import StaticSource, TestCa, now, self_signed

WHO = "/test.Probe/Who"
TICKS = "/test.Probe/Ticks"
SERVER = SpiffeId("agentmesh.local", "research", "researcher")
CLIENT = SpiffeId("agentmesh.local", "orchestration", "planner")


class _Probe(grpc.GenericRpcHandler):
    """Who: answers the caller's SPIFFE ID and transport; Ticks: streams until released."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.ticks_started = asyncio.Event()

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        if details.method == WHO:
            return grpc.unary_unary_rpc_method_handler(self._who)
        if details.method == TICKS:
            return grpc.unary_stream_rpc_method_handler(self._ticks)
        return None

    async def _who(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        auth = context.auth_context()
        peer = b",".join(auth.get("peer_spiffe_id", [b"-"]))
        transport = b",".join(auth.get("transport_security_type", [b"none"]))
        return peer + b" " + transport

    async def _ticks(self, request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        yield b"first"
        self.ticks_started.set()
        await self.release.wait()
        yield b"last"


async def _serve(port_adder: Any) -> tuple[grpc.aio.Server, _Probe, int]:
    server = grpc.aio.server()
    probe = _Probe()
    server.add_generic_rpc_handlers((probe,))
    port = port_adder(server)
    await server.start()
    return server, probe, port


def _stats() -> SidecarStats:
    return SidecarStats(agent=SERVER.agent, version="v1", team=SERVER.team)


def _identity(source: StaticSource, mode: str = "strict", agent: SpiffeId = SERVER) -> SidecarIdentity:
    return SidecarIdentity(
        source,
        mode=mode,  # type: ignore[arg-type]
        agent=AgentIdentity(name=agent.agent, team=agent.team),
        directory=Path("/nonexistent"),
    )


async def _who(channel: grpc.aio.Channel) -> bytes:
    call = channel.unary_unary(WHO, request_serializer=None, response_deserializer=None)
    answer: bytes = await call(b"", timeout=5)
    return answer


def _tls_channel(port: int, material: IdentityMaterial, expected: SpiffeId = SERVER) -> grpc.aio.Channel:
    return grpc.aio.secure_channel(
        f"127.0.0.1:{port}",
        channel_credentials(material),
        options=[("grpc.ssl_target_name_override", expected.dns_name), ("grpc.use_local_subchannel_pool", 1)],
    )


@pytest.fixture
def ca() -> TestCa:
    return TestCa()


@pytest.fixture
async def strict(ca: TestCa) -> AsyncIterator[tuple[int, StaticSource, _Probe]]:
    source = StaticSource(ca.issue(SERVER))
    identity = _identity(source)
    server, probe, port = await _serve(lambda s: s.add_secure_port("127.0.0.1:0", identity.server_credentials()))
    yield port, source, probe
    await server.stop(None)


async def test_strict_admits_a_mesh_certificate_and_tells_the_caller(
    strict: tuple[int, StaticSource, _Probe], ca: TestCa
) -> None:
    port, _, _ = strict
    async with _tls_channel(port, ca.issue(CLIENT)) as channel:
        assert await _who(channel) == f"{CLIENT.uri} ssl".encode()


def _impostors(ca: TestCa) -> dict[str, IdentityMaterial]:
    other_ca = TestCa("another root")
    other_domain = SpiffeId("elsewhere.example", CLIENT.team, CLIENT.agent)
    return {
        "self-signed": self_signed(CLIENT, bundle_pem=ca.bundle_pem),
        "another CA": other_ca.issue(CLIENT, bundle_pem=ca.bundle_pem),
        "another trust domain": other_ca.issue(other_domain, bundle_pem=ca.bundle_pem),
        "expired": ca.issue(
            CLIENT, not_before=now() - datetime.timedelta(hours=2), not_after=now() - datetime.timedelta(hours=1)
        ),
    }


async def test_strict_refuses_plaintext_and_every_impostor_in_the_handshake(
    strict: tuple[int, StaticSource, _Probe], ca: TestCa
) -> None:
    port, _, _ = strict
    refused: dict[str, grpc.StatusCode] = {}
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as plaintext:
            await _who(channel)
        refused["plaintext"] = plaintext.value.code()
    for name, material in _impostors(ca).items():
        async with _tls_channel(port, material) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await _who(channel)
            refused[name] = error.value.code()
    assert refused == dict.fromkeys(
        ["plaintext", "self-signed", "another CA", "another trust domain", "expired"], grpc.StatusCode.UNAVAILABLE
    )


async def test_strict_refuses_a_client_without_certificate(
    strict: tuple[int, StaticSource, _Probe], ca: TestCa
) -> None:
    port, _, _ = strict
    credentials = grpc.ssl_channel_credentials(root_certificates=ca.bundle_pem)
    options = [("grpc.ssl_target_name_override", SERVER.dns_name)]
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials, options=options) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await _who(channel)
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_the_listener_takes_a_rotated_certificate_without_dropping_open_streams(
    strict: tuple[int, StaticSource, _Probe], ca: TestCa
) -> None:
    port, source, probe = strict
    client = ca.issue(CLIENT)
    async with _tls_channel(port, client) as before:
        stream = before.unary_stream(TICKS, request_serializer=None, response_deserializer=None)(b"", timeout=30)
        assert await stream.read() == b"first"
        # The server moves to a certificate of a new CA; the bundle carries both roots during the change.
        new_ca = TestCa("next root")
        both = ca.bundle_pem + new_ca.bundle_pem
        source.publish(new_ca.issue(SERVER, generation=2, bundle_pem=both))
        # A caller trusting only the new root reaches the server now: new handshakes present the new certificate.
        only_new = new_ca.issue(CLIENT, bundle_pem=new_ca.bundle_pem)
        async with _tls_channel(port, only_new) as after:
            assert await _who(after) == f"{CLIENT.uri} ssl".encode()
        # ... and the stream opened before the rotation goes on to its end.
        probe.release.set()
        assert await stream.read() == b"last"
        assert await stream.code() == grpc.StatusCode.OK


async def test_a_listener_started_before_its_first_certificate_serves_once_it_arrives(ca: TestCa) -> None:
    source = StaticSource()
    identity = _identity(source)
    assert not identity.ready.is_set()
    server, _, port = await _serve(lambda s: s.add_secure_port("127.0.0.1:0", identity.server_credentials()))
    try:
        async with _tls_channel(port, ca.issue(CLIENT)) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await _who(channel)
            assert error.value.code() == grpc.StatusCode.UNAVAILABLE
        source.publish(ca.issue(SERVER))
        assert identity.ready.is_set()
        async with _tls_channel(port, ca.issue(CLIENT)) as channel:
            assert await _who(channel) == f"{CLIENT.uri} ssl".encode()
        described = identity.describe()
        assert described["spiffe_id"] == SERVER.uri and described["generation"] == 1
        assert "key" not in " ".join(str(k) for k in described)
    finally:
        await server.stop(None)


async def test_the_caller_refuses_a_server_that_is_not_the_expected_agent(
    strict: tuple[int, StaticSource, _Probe], ca: TestCa
) -> None:
    port, _, _ = strict
    pool = ChannelPool(options=[], identity=_identity(StaticSource(ca.issue(CLIENT)), agent=CLIENT))
    try:
        writer = SpiffeId("agentmesh.local", "content", "writer")
        with pool.lease(f"127.0.0.1:{port}", writer) as channel, pytest.raises(grpc.aio.AioRpcError) as error:
            await _who(channel)
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE
        with pool.lease(f"127.0.0.1:{port}", SERVER) as channel:
            assert await _who(channel) == f"{CLIENT.uri} ssl".encode()
    finally:
        await pool.close()


async def test_the_pool_waits_for_a_certificate_before_dialing_mtls(ca: TestCa) -> None:
    pool = ChannelPool(options=[], identity=_identity(StaticSource(), agent=CLIENT))
    with pytest.raises(NoRoute, match="over mTLS yet"), pool.lease("127.0.0.1:1", SERVER):
        pass
    await pool.close()


async def test_rotation_moves_new_calls_to_new_channels_and_lets_open_streams_finish(
    strict: tuple[int, StaticSource, _Probe], ca: TestCa
) -> None:
    port, _, probe = strict
    source = StaticSource(ca.issue(CLIENT))
    pool = ChannelPool(options=[], identity=_identity(source, agent=CLIENT))
    address = f"127.0.0.1:{port}"
    try:
        with pool.lease(address, SERVER) as old:
            stream = old.unary_stream(TICKS, request_serializer=None, response_deserializer=None)(b"", timeout=30)
            assert await stream.read() == b"first"
            source.publish(ca.issue(CLIENT, generation=2))
            with pool.lease(address, SERVER) as new:
                assert new is not old
                assert await _who(new) == f"{CLIENT.uri} ssl".encode()
            described = [(c["generation"], c["retired"], c["in_flight"]) for c in pool.describe()]
            assert described == [(1, True, 1), (2, False, 0)]
            probe.release.set()
            assert await stream.read() == b"last"
            assert await stream.code() == grpc.StatusCode.OK
        assert [(c["generation"], c["retired"]) for c in pool.describe()] == [(2, False)]
        # The old channel closes once its stream ended.
        assert await _closed(old)
    finally:
        await pool.close()


async def _closed(channel: grpc.aio.Channel) -> bool:
    for _ in range(100):
        if channel.get_state() == grpc.ChannelConnectivity.SHUTDOWN:
            return True
        await asyncio.sleep(0.01)
    return False


async def test_permissive_accepts_both_and_counts_plaintext_connections(ca: TestCa) -> None:
    source = StaticSource(ca.issue(SERVER))
    identity = _identity(source, mode="permissive")
    stats = _stats()
    ports: dict[str, int] = {}

    def add(server: grpc.aio.Server) -> int:
        ports["tls"] = server.add_secure_port("127.0.0.1:0", identity.server_credentials())
        ports["plain"] = server.add_insecure_port("127.0.0.1:0")
        return ports["tls"]

    server, _, _ = await _serve(add)
    front = PermissiveFront(tls_port=ports["tls"], plaintext_port=ports["plain"], stats=stats)
    port = await front.start("127.0.0.1", 0)
    try:
        async with _tls_channel(port, ca.issue(CLIENT)) as channel:
            assert await _who(channel) == f"{CLIENT.uri} ssl".encode()
            assert await _who(channel) == f"{CLIENT.uri} ssl".encode()
        for _ in range(2):
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                assert await _who(channel) == b"- insecure"
        async with _tls_channel(port, self_signed(CLIENT, bundle_pem=ca.bundle_pem)) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await _who(channel)
            assert error.value.code() == grpc.StatusCode.UNAVAILABLE
        assert _plaintext_connections(stats) == 2
        assert front.tls_connections >= 2
    finally:
        front.stop_accepting()
        await server.stop(None)
        await front.close()


def _plaintext_connections(stats: SidecarStats) -> float:
    value = stats.registry.get_sample_value("agentmesh_inbound_plaintext_connections_total", {"agent": SERVER.agent})
    return value or 0.0


async def test_a_certificate_for_another_agent_is_not_used(ca: TestCa) -> None:
    source = StaticSource(ca.issue(CLIENT))  # the planner's certificate, in the researcher's sidecar
    identity = _identity(source)
    assert identity.material is None and not identity.ready.is_set()
    assert "the certificate is for spiffe://agentmesh.local/team/orchestration/agent/planner" in identity.waiting_reason
    assert identity.describe()["state"] == "waiting"
    server, _, port = await _serve(lambda s: s.add_secure_port("127.0.0.1:0", identity.server_credentials()))
    try:
        async with _tls_channel(port, ca.issue(CLIENT), expected=CLIENT) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await _who(channel)
            assert error.value.code() == grpc.StatusCode.UNAVAILABLE
        source.publish(ca.issue(SERVER, generation=2))
        assert identity.ready.is_set()
        async with _tls_channel(port, ca.issue(CLIENT)) as channel:
            assert await _who(channel) == f"{CLIENT.uri} ssl".encode()
    finally:
        await server.stop(None)


def test_an_expired_certificate_is_reported_with_the_renewal_error(ca: TestCa) -> None:
    source = StaticSource(ca.issue(SERVER))
    identity = _identity(source)
    assert identity.expired() is None
    source.last_error = "renew: control plane unreachable"  # type: ignore[attr-defined]
    later = now() + datetime.timedelta(hours=2)
    assert identity.expired(later) == (
        f"the certificate expired at {identity.material.not_after.isoformat()}: renew: control plane unreachable"  # type: ignore[union-attr]
    )
