"""The control plane's secure port (`--secure-listen`) with real processes.

One `agentmesh control-plane` serves plaintext and TLS side by side; its
certificate for the secure port lives 4 s (a hidden test option), so it is
renewed every 2 s while the tests run. Covered: sidecars configured with only
the secure address and `control_plane.ca_file` enroll, register, get xDS and
serve an mTLS call, across renewals of the server certificate and after the
certificates their connections were opened with have expired; the CLI with
`--ca-file`; `agentmesh identity-agent --ca-file` and a proxyless gRPC client
whose bootstrap it wrote reaching ADS over TLS; refusals: a plaintext client
on the secure port, a TLS client on the plaintext port, another CA's bundle,
a wrong server name (the CLI exits 3 saying which), and a sidecar with another
CA's bundle that never sends its join token.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import socket
import ssl
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agentmesh.identity.files import CHAIN_FILE, KEY_FILE, ROOTS_FILE
from control_plane.identity.ca import CertificateAuthority
from tests.integration.controlplane import ControlPlaneProcess
from tests.integration.mesh import AgentUnderTest, Messages, agent_with_sidecar, unary
from tests.integration.procs import AGENTMESH, free_port, metric, start, wait_for

pytestmark = pytest.mark.timeout(180)

SEARCH = "/research.v1.Researcher/Search"
TEAM = "examples"
SERVER_NAME = "control-plane.agentmesh.local"
CERT_TTL = dt.timedelta(seconds=4)


class SecureControlPlane:
    """A control plane with a plaintext and a secure port, and its trust bundle in a file."""

    def __init__(self, tmp: Path) -> None:
        self.secure_port = free_port()
        self.secure = f"127.0.0.1:{self.secure_port}"
        self.process = ControlPlaneProcess(
            tmp,
            tmp / "cp.db",
            "--secure-listen",
            self.secure,
            "--secure-san",
            "127.0.0.1",
            "--secure-cert-ttl",
            f"{CERT_TTL.total_seconds():.0f}s",
        )
        # The documented way to the bundle: over the plaintext port, from a trusted network.
        shown = self.process.cli("ca", "bundle")
        assert shown.returncode == 0, shown.stderr
        self.bundle = tmp / "ca.pem"
        self.bundle.write_text(shown.stdout)
        wait_for(lambda: self.served().serial_number > 0, what="the secure port", process=self.process.process)

    def served(self, server_name: str = SERVER_NAME) -> x509.Certificate:
        """The certificate the secure port presents now, verified with the bundle for `server_name`."""
        context = ssl.create_default_context(cafile=str(self.bundle))
        context.set_alpn_protocols(["h2"])
        with (
            socket.create_connection(("127.0.0.1", self.secure_port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname=server_name) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
        assert der is not None
        return x509.load_der_x509_certificate(der)

    def cli(self, *args: str, ca_file: Path | None = None, **env: str) -> Any:
        """`agentmesh ARGS` against the secure port with the bundle (or `ca_file`) in the environment."""
        tls_env = {"AGENTMESH_CONTROL_PLANE": self.secure, "AGENTMESH_CA_FILE": str(ca_file or self.bundle)}
        return self.process.cli(*args, **{**tls_env, **env})

    def join_token(self, agent: str) -> str:
        """`agentmesh token create` over the secure port, the connection given as options this time."""
        created = self.process.cli(
            *("token", "create", "--agent", agent, "--team", TEAM, "--ttl", "10m"),
            *("--control-plane", self.secure, "--ca-file", str(self.bundle)),
        )
        assert created.returncode == 0, created.stderr
        return str(created.stdout.strip())

    def link(self, **extra: str) -> dict[str, str]:
        """agent.yaml's control_plane section: the secure address and the bundle only."""
        return {"address": self.secure, "ca_file": str(self.bundle), **extra}


@pytest.fixture(scope="module")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureControlPlane]:
    secure = SecureControlPlane(tmp_path_factory.mktemp("secure-cp"))
    yield secure
    secure.process.stop()


@pytest.fixture(scope="module")
def messages() -> Messages:
    return Messages()


def _egress_search(messages: Messages, caller: AgentUnderTest) -> bool:
    request = messages("research.v1.SearchRequest", query="over the secure link", max_results=1)
    with grpc.insecure_channel(f"127.0.0.1:{caller.ports.egress_grpc}") as egress:
        unary(
            egress,
            SEARCH,
            request,
            messages.cls("research.v1.SearchResponse"),
            timeout=10,
            metadata=(("x-agentmesh-target", "researcher"),),
        )
    return True


def _json(result: Any) -> dict[str, Any]:
    assert result.returncode == 0, result.stderr
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def _synced(control_plane: SecureControlPlane, node_id: str) -> bool:
    """Whether `node_id` has ACKed listeners and clusters, as `agentmesh proxy-status` shows over TLS."""
    for proxy in _json(control_plane.cli("proxy-status", "-o", "json")).get("proxies", []):
        if proxy["node_id"] == node_id:
            statuses = {r["type"]: r["status"] for r in proxy["resources"]}
            return statuses.get("lds") == "SYNCED" and statuses.get("cds") == "SYNCED"
    return False


def test_sidecars_work_over_the_secure_port_across_certificate_renewals(
    tmp_path: Path, control_plane: SecureControlPlane, messages: Messages
) -> None:
    first = control_plane.served()
    names = first.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == [SERVER_NAME]
    assert first.not_valid_after_utc - first.not_valid_before_utc <= CERT_TTL + dt.timedelta(minutes=1)
    with agent_with_sidecar(
        tmp_path, "researcher", join_token=control_plane.join_token("researcher"), control_plane=control_plane.link()
    ) as researcher:
        connected_by = dt.datetime.now(dt.UTC)  # every connection the researcher opened so far, it opened by now
        # The server certificate is renewed while the researcher stays connected; the writer meets a newer one.
        wait_for(
            lambda: control_plane.served().serial_number != first.serial_number,
            what="a renewed server certificate",
            process=control_plane.process.process,
        )
        with agent_with_sidecar(
            tmp_path, "writer", join_token=control_plane.join_token("writer"), control_plane=control_plane.link()
        ) as writer:
            # xDS told the writer where the researcher is; the call between them is mutual TLS.
            wait_for(lambda: _egress_search(messages, writer), what="writer → researcher", process=writer.sidecar)
            for under_test in (researcher, writer):
                identity = under_test.identity()
                assert identity["state"] == "ready"
                assert identity["spiffe_id"] == f"spiffe://agentmesh.local/team/{TEAM}/agent/{under_test.name}"
                assert under_test.sidecar is not None
                assert (
                    f"control plane link: {control_plane.secure} (TLS, server name {SERVER_NAME}, "
                    f"roots from {control_plane.bundle})" in under_test.sidecar.output()
                )
            registered = _json(control_plane.cli("agents", "-o", "json"))
            addresses = {
                agent["name"]: [i["address"] for v in agent["versions"] for i in v["instances"]]
                for agent in registered["agents"]
            }
            assert addresses == {
                "researcher": [researcher.ports.inbound_address],
                "writer": [writer.ports.inbound_address],
            }
            for under_test in (researcher, writer):
                node_id = f"{under_test.name}~{under_test.ports.inbound_address}"
                wait_for(functools.partial(_synced, control_plane, node_id), what=f"{node_id} synced")

            # Every certificate the researcher's connections were opened with has expired; they keep going.
            expired_by = connected_by + CERT_TTL + dt.timedelta(seconds=1)
            time.sleep(max(0.0, (expired_by - dt.datetime.now(dt.UTC)).total_seconds()))
            assert _egress_search(messages, writer)
            assert _synced(control_plane, f"researcher~{researcher.ports.inbound_address}")
            assert researcher.sidecar is not None
            log = researcher.sidecar.output()
            assert f"registration with {control_plane.secure} failed" not in log, log
            assert f"xDS stream to {control_plane.secure} lost" not in log, log
    expiry = metric(control_plane.process.http_url, "agentmesh_control_plane_certificate_expiry_timestamp_seconds")
    assert expiry > first.not_valid_after_utc.timestamp()
    renewed = control_plane.process.process.output().count("secure port certificate renewed")
    assert renewed >= 2


# Starts connecting (which makes gRPC's xDS client open its ADS stream), then waits to be stopped.
PROXYLESS_CLIENT = """
import time, grpc, grpc.experimental
credentials = grpc.xds_channel_credentials(grpc.experimental.insecure_channel_credentials())
channel = grpc.secure_channel("xds:///researcher", credentials)
channel.subscribe(lambda state: None, try_to_connect=True)
time.sleep(120)
"""


def test_identity_agent_and_a_proxyless_client_over_the_secure_port(
    tmp_path: Path, control_plane: SecureControlPlane
) -> None:
    token_file = tmp_path / "planner.token"
    token_file.write_text(control_plane.join_token("planner"))
    directory, bootstrap = tmp_path / "planner.identity", tmp_path / "planner.bootstrap.json"
    argv = [
        *AGENTMESH,
        "identity-agent",
        "--control-plane",
        control_plane.secure,
        "--ca-file",
        str(control_plane.bundle),
        "--join-token-file",
        str(token_file),
        "--dir",
        str(directory),
        "--no-sds",
        "--grpc-bootstrap",
        str(bootstrap),
    ]
    agent = start("identity-agent-planner", argv, tmp_path)
    try:
        wait_for(
            lambda: bootstrap.exists() and all((directory / f).exists() for f in (KEY_FILE, CHAIN_FILE, ROOTS_FILE)),
            what="the identity agent's certificate and bootstrap",
            process=agent,
        )
        written = json.loads(bootstrap.read_text())
        assert written["xds_servers"][0]["server_uri"] == control_plane.secure
        assert written["xds_servers"][0]["channel_creds"] == [
            {"type": "tls", "config": {"ca_certificate_file": str(control_plane.bundle.resolve())}}
        ]
        # The proxyless client's own ADS stream goes to the secure port with those credentials.
        client = start(
            "proxyless-planner",
            [sys.executable, "-c", PROXYLESS_CLIENT],
            tmp_path,
            env={"GRPC_XDS_BOOTSTRAP": str(bootstrap)},
        )
        try:
            wait_for(lambda: _connected(control_plane, "proxyless~planner"), what="the proxyless client on ADS")
        finally:
            client.stop()
    finally:
        assert agent.stop() == 0, agent.output()


def _connected(control_plane: SecureControlPlane, node_id: str) -> bool:
    proxies = _json(control_plane.cli("proxy-status", "-o", "json")).get("proxies", [])
    return any(proxy["node_id"] == node_id for proxy in proxies)


def test_clients_without_the_right_trust_are_refused(tmp_path: Path, control_plane: SecureControlPlane) -> None:
    # A plaintext client on the secure port: refused in the handshake.
    with grpc.insecure_channel(control_plane.secure) as channel, pytest.raises(grpc.RpcError) as refused:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    plaintext = control_plane.process.cli("ca", "show", AGENTMESH_CONTROL_PLANE=control_plane.secure)
    assert plaintext.returncode == 3
    assert "pass its trust bundle with --ca-file" in plaintext.stderr

    # A TLS client on the plaintext port.
    on_plaintext = control_plane.cli("ca", "show", AGENTMESH_CONTROL_PLANE=control_plane.process.address)
    assert on_plaintext.returncode == 3
    assert "the server does not speak TLS" in on_plaintext.stderr

    # Another CA's bundle: the server is not who the client trusts.
    other = tmp_path / "other-ca.pem"
    other.write_bytes(CertificateAuthority.in_memory(trust_domain="agentmesh.local").trust_bundle_pem)
    foreign = control_plane.cli("ca", "show", ca_file=other)
    assert foreign.returncode == 3
    assert f"error: cannot reach the control plane at {control_plane.secure}: the control plane's certificate " in (
        foreign.stderr
    )
    assert f"was not issued under the roots in {other}" in foreign.stderr

    # The right CA, a name the certificate does not carry.
    misnamed = control_plane.cli("ca", "show", "--server-name", "cp.elsewhere.example")
    assert misnamed.returncode == 3
    assert "does not carry the name cp.elsewhere.example" in misnamed.stderr
    # A name from --secure-san works.
    by_ip = control_plane.cli("ca", "show", "--server-name", "127.0.0.1")
    assert by_ip.returncode == 0, by_ip.stderr


def test_a_sidecar_with_another_cas_bundle_never_sends_its_join_token(
    tmp_path: Path, control_plane: SecureControlPlane
) -> None:
    other = tmp_path / "other-ca.pem"
    other.write_bytes(CertificateAuthority.in_memory(trust_domain="agentmesh.local").trust_bundle_pem)
    token = control_plane.join_token("summarizer")
    token_id = token.split(".")[1]
    link = {"address": control_plane.secure, "ca_file": str(other)}
    with agent_with_sidecar(
        tmp_path, "summarizer", start_agent=False, join_token=token, control_plane=link
    ) as summarizer:
        wait_for(
            lambda: "CERTIFICATE_VERIFY_FAILED" in summarizer.identity().get("reason", ""),
            what="the handshake failure as the reason it has no certificate",
            process=summarizer.sidecar,
        )
        assert summarizer.identity()["state"] == "waiting"
        tokens = _json(control_plane.cli("token", "list", "-o", "json"))["tokens"]
        assert [t["uses"] for t in tokens if t["id"] == token_id] == [0]
        assert "registered with the control plane" not in (summarizer.sidecar.output() if summarizer.sidecar else "")
