"""The CLI's connection options `--ca-file` and `--server-name`: admin commands over the control plane's secure port.

A whole control plane (in memory, its own CA) runs on a loop in a background
thread with a plaintext and a secure port; `agentmesh ca show` is the admin
call, since any admin command dials through the same AdminClient.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from control_plane.app import ControlPlane, ControlPlaneSettings
from control_plane.identity.ca import CertificateAuthority
from tests.unit.cli.conftest import Background, invoke
from tests.unit.control_plane.api.harness import TOKEN


@dataclass
class TwoPortControlPlane:
    control_plane: ControlPlane
    plaintext: str
    secure: str

    @property
    def address(self) -> str:
        return self.plaintext

    async def stop(self) -> None:
        await self.control_plane.stop(grace=0)


async def _start() -> TwoPortControlPlane:
    settings = ControlPlaneSettings(
        listen="127.0.0.1:0",
        secure_listen="127.0.0.1:0",
        secure_sans=("127.0.0.1",),
        http="127.0.0.1:0",
        db=":memory:",
        token=TOKEN,
    )
    control_plane = ControlPlane(settings)
    ports = await control_plane.start()
    return TwoPortControlPlane(control_plane, f"127.0.0.1:{ports.grpc}", f"127.0.0.1:{ports.secure}")


@pytest.fixture(scope="module")
def control_plane() -> Iterator[Background[TwoPortControlPlane]]:
    background = Background(_start(), name="control-plane")
    yield background
    background.close()


@pytest.fixture
def bundle(tmp_path: Path, control_plane: Background[TwoPortControlPlane]) -> Path:
    path = tmp_path / "ca.pem"
    path.write_bytes(control_plane.harness.control_plane.ca.trust_bundle_pem)
    return path


def test_admin_calls_over_the_secure_port(control_plane: Background[TwoPortControlPlane], bundle: Path) -> None:
    secure = control_plane.harness.secure
    shown = invoke(secure, "ca", "show", "--ca-file", str(bundle))
    assert shown.exit_code == 0, shown.output
    assert "Trust domain:    agentmesh.local" in shown.output
    # On the group, from the environment, and with a server name from --secure-san.
    grouped = invoke(secure, "ca", "--ca-file", str(bundle), "--server-name", "127.0.0.1", "bundle")
    assert grouped.exit_code == 0 and grouped.output.startswith("-----BEGIN CERTIFICATE-----")
    from_env = invoke(secure, "ca", "show", env={"AGENTMESH_CA_FILE": str(bundle)})
    assert from_env.exit_code == 0, from_env.output


def test_plaintext_client_on_the_secure_port(control_plane: Background[TwoPortControlPlane]) -> None:
    refused = invoke(control_plane.harness.secure, "ca", "show")
    assert refused.exit_code == 3
    assert "error: cannot reach the control plane at" in refused.output
    assert "if this is the control plane's secure (TLS) port, pass its trust bundle with --ca-file" in refused.output


def test_tls_client_on_the_plaintext_port(control_plane: Background[TwoPortControlPlane], bundle: Path) -> None:
    refused = invoke(control_plane.harness.plaintext, "ca", "show", "--ca-file", str(bundle))
    assert refused.exit_code == 3
    assert "the server does not speak TLS" in refused.output


def test_another_cas_bundle(control_plane: Background[TwoPortControlPlane], tmp_path: Path) -> None:
    other = tmp_path / "other-ca.pem"
    other.write_bytes(CertificateAuthority.in_memory(trust_domain="agentmesh.local").trust_bundle_pem)
    refused = invoke(control_plane.harness.secure, "ca", "show", "--ca-file", str(other))
    assert refused.exit_code == 3
    assert f"the control plane's certificate was not issued under the roots in {other}" in refused.output


def test_wrong_server_name(control_plane: Background[TwoPortControlPlane], bundle: Path) -> None:
    refused = invoke(
        control_plane.harness.secure, "ca", "show", "--ca-file", str(bundle), "--server-name", "cp.elsewhere.example"
    )
    assert refused.exit_code == 3
    assert "the control plane's certificate does not carry the name cp.elsewhere.example" in refused.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--ca-file", "{tmp}/missing.pem"), "error: --ca-file: {tmp}/missing.pem: cannot read the trust bundle"),
        (("--ca-file", "{tmp}"), "error: --ca-file: {tmp}: cannot read the trust bundle"),
        (("--server-name", "cp.example.org"), "error: --server-name needs --ca-file"),
    ],
)
def test_unusable_tls_options_exit_2(
    control_plane: Background[TwoPortControlPlane], tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    given = [arg.format(tmp=tmp_path) for arg in args]
    refused = invoke(control_plane.harness.secure, "ca", "show", *given)
    assert refused.exit_code == 2
    assert message.format(tmp=tmp_path) in refused.output
