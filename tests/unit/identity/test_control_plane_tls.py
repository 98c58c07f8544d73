"""The client side of the control plane's secure port: reading the bundle, the server name, and real handshakes.

The handshakes run against a grpc.aio server on loopback with the same two
ports the control plane has (plaintext, and TLS with ServerTls), so the
messages `explain_connection_failure` reads are grpc's real ones.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]

from agentmesh.identity.control_plane_tls import (
    DEFAULT_SERVER_NAME,
    TARGET_NAME_OPTION,
    ControlPlaneTarget,
    ControlPlaneTls,
    TrustBundleError,
    check_server_name,
    explain_connection_failure,
    open_aio_channel,
)
from control_plane.identity.ca import CertificateAuthority
from control_plane.identity.server_tls import ServerTls
from tests.pki import now, user_root


def _bundle(tmp_path: Path, ca: CertificateAuthority, name: str = "ca.pem") -> Path:
    path = tmp_path / name
    path.write_bytes(ca.trust_bundle_pem)
    return path


# --- the bundle and the server name ---------------------------------------------------------------------------------


def test_server_name_defaults_to_the_bundles_trust_domain(tmp_path: Path) -> None:
    ca = CertificateAuthority.in_memory(trust_domain="example.org")
    tls = ControlPlaneTls.from_file(_bundle(tmp_path, ca))
    assert tls.server_name == "control-plane.example.org"
    assert tls.roots_pem == ca.trust_bundle_pem and tls.ca_file == tmp_path / "ca.pem"
    assert "roots_pem" not in repr(tls)


def test_server_name_of_a_user_root_bundle_is_the_documented_default(tmp_path: Path) -> None:
    cert_file, _, _, _ = user_root(tmp_path, now=now())
    assert ControlPlaneTls.from_file(cert_file).server_name == DEFAULT_SERVER_NAME == "control-plane.agentmesh.local"


def test_server_name_override(tmp_path: Path) -> None:
    path = _bundle(tmp_path, CertificateAuthority.in_memory(trust_domain="agentmesh.local"))
    assert ControlPlaneTls.from_file(path, server_name="CP.Example.org").server_name == "cp.example.org"
    assert ControlPlaneTls.from_file(path, server_name="[::1]").server_name == "::1"
    with pytest.raises(TrustBundleError, match="'cp example' is neither an IP address nor a DNS name"):
        ControlPlaneTls.from_file(path, server_name="cp example")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read the trust bundle"),
        (b"", "no PEM certificate in it"),
        (b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n", "no PEM certificate in it"),
    ],
)
def test_unusable_bundle_names_the_file(tmp_path: Path, content: bytes | None, message: str) -> None:
    path = tmp_path / "bundle.pem"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(TrustBundleError) as refused:
        ControlPlaneTls.from_file(path)
    assert str(refused.value).startswith(f"{path}: {message}")


def test_a_workload_certificate_is_not_a_bundle(tmp_path: Path) -> None:
    ca = CertificateAuthority.in_memory(trust_domain="agentmesh.local")
    leaf = tmp_path / "server.pem"
    leaf.write_bytes(ca.issue_server_certificate(ttl=ca.workload_ttl).chain_pem)
    with pytest.raises(TrustBundleError, match=r"holds no CA certificate .* not a workload certificate"):
        ControlPlaneTls.from_file(leaf)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("control-plane.agentmesh.local", "control-plane.agentmesh.local"), ("10.0.0.7", "10.0.0.7"), ("cp.", "cp")],
)
def test_check_server_name(value: str, expected: str) -> None:
    assert check_server_name(value) == expected


def test_options_carry_the_server_name_once() -> None:
    tls = ControlPlaneTls(b"roots", "cp.example.org")
    options = tls.options([("grpc.max_receive_message_length", 10), (TARGET_NAME_OPTION, "other")])
    assert options == [("grpc.max_receive_message_length", 10), (TARGET_NAME_OPTION, "cp.example.org")]
    assert str(ControlPlaneTarget("cp:15012", tls)) == "cp:15012 (TLS, server name cp.example.org, given roots)"
    assert str(ControlPlaneTarget("cp:15010")) == "cp:15010"


# --- real handshakes ----------------------------------------------------------------------------------------------


@dataclass
class TwoPorts:
    """A grpc.aio server serving health on a plaintext and a TLS port, like the control plane."""

    server: grpc.aio.Server
    plaintext: str
    secure: str
    ca: CertificateAuthority


@pytest.fixture
async def ports() -> AsyncIterator[TwoPorts]:
    ca = CertificateAuthority.in_memory(trust_domain="agentmesh.local")
    tls = ServerTls(ca, extra_names=["127.0.0.1"])
    server = grpc.aio.server()
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    plaintext = server.add_insecure_port("127.0.0.1:0")
    secure = server.add_secure_port("127.0.0.1:0", tls.credentials())
    await server.start()
    yield TwoPorts(server, f"127.0.0.1:{plaintext}", f"127.0.0.1:{secure}", ca)
    await server.stop(None)


async def _check(address: str, tls: ControlPlaneTls | None) -> grpc.StatusCode | str:
    """OK, or the failed call's code and details joined by a space."""
    async with open_aio_channel(address, tls) as channel:
        try:
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        except grpc.aio.AioRpcError as exc:
            return f"{exc.code().name} {exc.details()}"
    return grpc.StatusCode.OK


def _tls(tmp_path: Path, ports: TwoPorts, *, server_name: str | None = None) -> ControlPlaneTls:
    return ControlPlaneTls.from_file(_bundle(tmp_path, ports.ca), server_name=server_name)


async def test_tls_client_reaches_the_secure_port(tmp_path: Path, ports: TwoPorts) -> None:
    tls = _tls(tmp_path, ports)
    assert await _check(ports.secure, tls) == grpc.StatusCode.OK
    assert await _check(ports.secure, _tls(tmp_path, ports, server_name="127.0.0.1")) == grpc.StatusCode.OK
    assert await _check(ports.plaintext, None) == grpc.StatusCode.OK, "the plaintext port keeps serving"

    def blocking() -> int:
        with ControlPlaneTarget(ports.secure, tls).channel() as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        return int(reply.status)

    # The blocking channel (the CLI's) in a thread: the server runs on this loop.
    assert await asyncio.to_thread(blocking) == health_pb2.HealthCheckResponse.SERVING


async def test_plaintext_client_on_the_secure_port(ports: TwoPorts) -> None:
    outcome = await _check(ports.secure, None)
    assert isinstance(outcome, str) and outcome.startswith("UNAVAILABLE")
    explained = explain_connection_failure(outcome, None)
    assert explained is not None and "--ca-file" in explained


async def test_tls_client_on_the_plaintext_port(tmp_path: Path, ports: TwoPorts) -> None:
    tls = _tls(tmp_path, ports)
    outcome = await _check(ports.plaintext, tls)
    assert isinstance(outcome, str) and outcome.startswith("UNAVAILABLE")
    assert "does not speak TLS" in (explain_connection_failure(outcome, tls) or "")


async def test_another_cas_bundle(tmp_path: Path, ports: TwoPorts) -> None:
    other = CertificateAuthority.in_memory(trust_domain="agentmesh.local")
    tls = ControlPlaneTls.from_file(_bundle(tmp_path, other, "other.pem"))
    outcome = await _check(ports.secure, tls)
    assert isinstance(outcome, str) and outcome.startswith("UNAVAILABLE")
    explained = explain_connection_failure(outcome, tls) or ""
    assert f"not issued under the roots in {tmp_path / 'other.pem'}" in explained


async def test_wrong_server_name(tmp_path: Path, ports: TwoPorts) -> None:
    tls = _tls(tmp_path, ports, server_name="cp.elsewhere.example")
    outcome = await _check(ports.secure, tls)
    assert isinstance(outcome, str) and outcome.startswith("UNAVAILABLE")
    assert "does not carry the name cp.elsewhere.example" in (explain_connection_failure(outcome, tls) or "")


def test_nothing_to_explain() -> None:
    assert explain_connection_failure("failed to connect to all addresses: Connection refused", None) is None
    tls = ControlPlaneTls(b"roots", "cp")
    assert explain_connection_failure("failed to connect to all addresses: Connection refused", tls) is None
