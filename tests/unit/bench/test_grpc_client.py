"""The Python load generator over mutual TLS: it presents the identity it is given and checks the server's name."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from agentmesh.identity.files import write_material
from agentmesh.identity.spiffe import DEFAULT_TRUST_DOMAIN, SpiffeId
from bench import grpc_client
from tests.integration.procs import free_port
from tests.pki import TestCa

METHOD = "/bench.v1.Echo/Echo"
SERVER = SpiffeId(DEFAULT_TRUST_DOMAIN, "bench", "echo-mtls")
CLIENT = SpiffeId(DEFAULT_TRUST_DOMAIN, "bench", "bench-client")


class EchoServer:
    """A strict mTLS server answering METHOD with the request, noting each caller's SPIFFE ID."""

    def __init__(self, ca: TestCa) -> None:
        self.callers: list[bytes] = []
        material = ca.issue(SERVER)
        credentials = grpc.ssl_server_credentials(
            [(material.private_key_pem, material.certificate_chain_pem)],
            root_certificates=ca.bundle_pem,
            require_client_auth=True,
        )
        handler = grpc.method_handlers_generic_handler(
            "bench.v1.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(self._echo)}
        )
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), handlers=[handler])
        self.address = f"127.0.0.1:{free_port()}"
        self.server.add_secure_port(self.address, credentials)

    def _echo(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        peer: list[bytes] = list(context.auth_context().get("peer_spiffe_id", []))  # type: ignore[arg-type]
        self.callers += peer
        return request


@pytest.fixture
def ca() -> TestCa:
    return TestCa()


@pytest.fixture
def server(ca: TestCa) -> Iterator[EchoServer]:
    echo = EchoServer(ca)
    echo.server.start()
    yield echo
    echo.server.stop(None)


def identity_dir(tmp_path: Path, ca: TestCa) -> Path:
    directory = tmp_path / "client.identity"
    write_material(directory, ca.issue(CLIENT))
    return directory


def test_unary_over_mtls_presents_the_client_identity(tmp_path: Path, ca: TestCa, server: EchoServer):
    body, out = tmp_path / "body.bin", tmp_path / "out.json"
    body.write_bytes(b"ping")
    argv = ["unary", "--target", server.address, "--method", METHOD, "--body-file", str(body), "--out", str(out)]
    argv += ["--rate", "40", "--duration", "0.25", "--channels", "1"]
    argv += ["--tls-dir", str(identity_dir(tmp_path, ca)), "--tls-server-name", SERVER.dns_name]

    assert grpc_client.main(argv) == 0

    result = json.loads(out.read_text())
    assert result["errors"] == {} and len(result["latencies_us"]) >= 5
    assert set(server.callers) == {CLIENT.uri.encode()}


def test_tls_dir_missing_a_file_names_it(tmp_path: Path, ca: TestCa):
    directory = identity_dir(tmp_path, ca)
    (directory / "root-cert.pem").unlink()

    with pytest.raises(ValueError, match=r"--tls-dir .*: missing .*root-cert\.pem"):
        grpc_client.ClientTls.from_dir(directory, SERVER.dns_name)


def test_tls_dir_needs_the_server_name(tmp_path: Path, ca: TestCa):
    with pytest.raises(ValueError, match="--tls-dir needs --tls-server-name"):
        grpc_client.ClientTls.from_dir(identity_dir(tmp_path, ca), "")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--tls-server-name", "echo.bench.agentmesh.local"], "--tls-server-name needs --tls-dir"),
        (["--tls-dir", "/nonexistent", "--tls-server-name", "x"], "missing /nonexistent/key.pem"),
    ],
)
def test_bad_tls_options_are_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
):
    body = tmp_path / "body.bin"
    body.write_bytes(b"")
    argv = ["unary", "--target", "127.0.0.1:1", "--method", METHOD, "--body-file", str(body), "--out", "x", *extra]

    with pytest.raises(SystemExit) as exit_info:
        grpc_client.main(argv)

    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
