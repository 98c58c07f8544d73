"""Mutual TLS between real sidecars, with certificates from a real control plane's CA.

Processes: `agentmesh control-plane` (its CA, join tokens, xDS with cluster
TLS), example agents and their sidecars enrolled with join tokens. Covers: a
call between two sidecars over mTLS; a strict inbound refusing plaintext,
self-signed, foreign-CA, foreign-trust-domain and expired certificates
(UNAVAILABLE); permissive accepting both and counting plaintext; a caller
refusing a server that is not the agent it expects; readiness before the
first certificate; a restart reusing the persisted identity without a token.
"""

from __future__ import annotations

import asyncio
import datetime
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from agentmesh.identity.material import IdentityMaterial
from agentmesh.identity.spiffe import SpiffeId
from agentmesh.v1 import control_pb2, control_pb2_grpc
from sidecar.app import load_contract
from sidecar.config.bootstrap import Bootstrap
from sidecar.config.registration import Registrar
from sidecar.contract.manifest import build_manifest
from tests.integration.controlplane import TOKEN, ControlPlaneProcess
from tests.integration.mesh import (
    AgentUnderTest,
    Messages,
    admin_json,
    agent_with_sidecar,
    create_join_token,
    enroll,
    mtls_agent,
    status_of,
    unary,
)
from tests.integration.procs import EXAMPLES, free_port, wait_for
from tests.pki import TestCa, self_signed

SEARCH = "/research.v1.Researcher/Search"
TEAM = "examples"
RESEARCHER = SpiffeId("agentmesh.local", TEAM, "researcher")
WRITER = SpiffeId("agentmesh.local", TEAM, "writer")


@pytest.fixture(scope="module")
def messages() -> Messages:
    return Messages()


@pytest.fixture
def control_plane(tmp_path: Path) -> Iterator[ControlPlaneProcess]:
    process = ControlPlaneProcess(tmp_path, tmp_path / "cp.db")
    yield process
    process.process.stop()


@pytest.fixture
def short_lived(tmp_path: Path) -> Iterator[ControlPlaneProcess]:
    """A control plane whose workload certificates live 4 s (sidecars renew about every 2 s)."""
    process = ControlPlaneProcess(tmp_path, tmp_path / "cp-short.db", "--workload-cert-ttl", "4s")
    yield process
    process.process.stop()


def search(messages: Messages, channel: grpc.Channel, **kwargs: Any) -> Any:
    request = messages("research.v1.SearchRequest", query="through the mesh", max_results=1)
    return unary(channel, SEARCH, request, messages.cls("research.v1.SearchResponse"), timeout=10, **kwargs)


def via_egress(messages: Messages, caller: AgentUnderTest) -> Any:
    with grpc.insecure_channel(f"127.0.0.1:{caller.ports.egress_grpc}") as egress:
        return search(messages, egress, metadata=(("x-agentmesh-target", "researcher"),))


def reaches(messages: Messages, caller: AgentUnderTest) -> bool:
    via_egress(messages, caller)
    return True


def known_target(caller: AgentUnderTest, address: str) -> dict[str, Any]:
    known: dict[str, Any] = admin_json(caller.ports, "/config_dump")["targets"]["known"]
    return dict(known.get(address, {}))


def test_two_sidecars_call_each_other_over_mtls(
    tmp_path: Path, control_plane: ControlPlaneProcess, messages: Messages
) -> None:
    with (
        mtls_agent(tmp_path, control_plane.address, "researcher") as researcher,
        mtls_agent(tmp_path, control_plane.address, "writer") as writer,
    ):
        for under_test, spiffe_id in ((researcher, RESEARCHER), (writer, WRITER)):
            identity = under_test.identity()
            assert identity["mtls"] is True and identity["mode"] == "strict"
            assert identity["spiffe_id"] == spiffe_id.uri and identity["generation"] >= 1
            assert identity["serial"] and identity["not_after"]
            assert not any("key" in field for field in identity), "the admin endpoint never shows the key"
        wait_for(lambda: reaches(messages, writer), what="writer → researcher over mTLS", process=writer.sidecar)
        target = known_target(writer, researcher.ports.inbound_address)
        assert target["identity"] == RESEARCHER.uri
        channels = admin_json(writer.ports, "/config_dump")["targets"]["channels"]
        assert any(c["identity"] == RESEARCHER.uri for c in channels)
        # The strict inbound refuses a plaintext caller in the handshake.
        with (
            grpc.insecure_channel(researcher.ports.inbound_address) as plaintext,
            pytest.raises(grpc.RpcError) as refused,
        ):
            search(messages, plaintext)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def enroll_as(control_plane: ControlPlaneProcess, agent: str, team: str = TEAM) -> IdentityMaterial:
    """A mesh certificate for `agent`, enrolled from the test with a join token (the key stays here)."""
    return enroll(control_plane.address, create_join_token(control_plane.address, agent, team=team))


def tls_search(messages: Messages, address: str, material: IdentityMaterial, *, bundle: bytes | None = None) -> Any:
    """A direct call to a sidecar's inbound with `material` as client certificate (verifying the researcher)."""
    credentials = grpc.ssl_channel_credentials(
        root_certificates=bundle or material.trust_bundle_pem,
        private_key=material.private_key_pem,
        certificate_chain=material.certificate_chain_pem,
    )
    options = [("grpc.ssl_target_name_override", RESEARCHER.dns_name)]
    with grpc.secure_channel(address, credentials, options=options) as channel:
        return search(messages, channel)


def plaintext_search(messages: Messages, address: str) -> Any:
    with grpc.insecure_channel(address) as channel:
        return search(messages, channel)


def test_strict_refuses_every_caller_without_a_valid_mesh_certificate(
    tmp_path: Path, short_lived: ControlPlaneProcess, messages: Messages
) -> None:
    # Certificates of this control plane live 4 s: `expired` is one of its own, used after its end.
    expired = enroll_as(short_lived, "intruder")
    with mtls_agent(tmp_path, short_lived.address, "researcher") as researcher:
        address = researcher.ports.inbound_address
        bundle = expired.trust_bundle_pem
        valid = enroll_as(short_lived, "caller")
        other_ca = TestCa("another root")
        attempts = {
            "plaintext": lambda: plaintext_search(messages, address),
            "self-signed": lambda: tls_search(messages, address, self_signed(WRITER, bundle_pem=bundle)),
            "another CA": lambda: tls_search(messages, address, other_ca.issue(WRITER, bundle_pem=bundle)),
            "another trust domain": lambda: tls_search(
                messages, address, other_ca.issue(SpiffeId("elsewhere.example", TEAM, "writer"), bundle_pem=bundle)
            ),
        }
        # The transport admits a current mesh certificate (what it may call is the access policy's business).
        assert status_of(lambda: tls_search(messages, address, valid)) != grpc.StatusCode.UNAVAILABLE
        while datetime.datetime.now(datetime.UTC) < expired.not_after:
            time.sleep(0.2)
        attempts["expired"] = lambda: tls_search(messages, address, expired)
        codes = {name: status_of(attempt) for name, attempt in attempts.items()}
        assert codes == dict.fromkeys(attempts, grpc.StatusCode.UNAVAILABLE)
        # The sidecar kept serving through all of it.
        assert status_of(lambda: tls_search(messages, address, enroll_as(short_lived, "caller"))) != (
            grpc.StatusCode.UNAVAILABLE
        )
        assert researcher.sidecar is not None and researcher.sidecar.alive()


def plaintext_connections(under_test: AgentUnderTest) -> float:
    with urllib.request.urlopen(f"{under_test.ports.admin_url}/metrics", timeout=5) as response:
        text = response.read().decode()
    for line in text.splitlines():
        if line.startswith("agentmesh_inbound_plaintext_connections_total{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_permissive_accepts_plaintext_and_mtls_and_counts_plaintext(
    tmp_path: Path, control_plane: ControlPlaneProcess, messages: Messages
) -> None:
    with (
        mtls_agent(tmp_path, control_plane.address, "researcher", identity={"mode": "permissive"}) as researcher,
        mtls_agent(tmp_path, control_plane.address, "writer") as writer,
    ):
        assert researcher.identity()["mode"] == "permissive"
        before = plaintext_connections(researcher)
        with grpc.insecure_channel(researcher.ports.inbound_address) as plaintext:
            assert search(messages, plaintext).findings
        assert plaintext_connections(researcher) == before + 1
        wait_for(lambda: reaches(messages, writer), what="writer → permissive researcher over mTLS")
        assert known_target(writer, researcher.ports.inbound_address)["identity"] == RESEARCHER.uri
        assert plaintext_connections(researcher) == before + 1, "the mTLS calls are not counted as plaintext"


def test_without_token_or_persisted_identity_the_sidecar_runs_plaintext_and_says_why(
    tmp_path: Path, control_plane: ControlPlaneProcess, messages: Messages
) -> None:
    identity_dir = tmp_path / "nothing-here"
    with agent_with_sidecar(
        tmp_path,
        "researcher",
        control_plane={"address": control_plane.address},
        identity={"dir": str(identity_dir)},
        sidecar_env={"AGENTMESH_JOIN_TOKEN": ""},
    ) as researcher:
        identity = researcher.identity()
        assert identity["mtls"] is False
        assert "no join token" in identity["reason"] and str(identity_dir) in identity["reason"]
        with grpc.insecure_channel(researcher.ports.inbound_address) as plaintext:
            assert search(messages, plaintext).findings
        assert researcher.sidecar is not None
        assert researcher.sidecar.output().count("mTLS off: no join token") == 1


def readyz(under_test: AgentUnderTest) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"{under_test.ports.admin_url}/readyz", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read().decode()


def test_readiness_waits_for_the_first_certificate(tmp_path: Path, control_plane: ControlPlaneProcess) -> None:
    with agent_with_sidecar(
        tmp_path,
        "researcher",
        join_token="not-a-join-token",
        control_plane={"address": control_plane.address},
        wait_ready=False,
    ) as researcher:
        assert researcher.sidecar is not None
        wait_for(lambda: "enroll" in readyz(researcher)[1], what="the enrollment failure on /readyz")
        status, reason = readyz(researcher)
        assert status == 503 and reason.startswith("no certificate yet:")
        assert researcher.identity()["state"] == "waiting"
        assert researcher.sidecar.alive()


def test_a_restarted_sidecar_reuses_its_persisted_identity_without_a_token(
    tmp_path: Path, control_plane: ControlPlaneProcess, messages: Messages
) -> None:
    with (
        mtls_agent(tmp_path, control_plane.address, "researcher") as researcher,
        mtls_agent(tmp_path, control_plane.address, "writer") as writer,
    ):
        first = researcher.identity()
        wait_for(lambda: reaches(messages, writer), what="writer → researcher over mTLS")
        researcher.restart_sidecar(tmp_path, env={"AGENTMESH_JOIN_TOKEN": ""})
        again = researcher.identity()
        assert again["state"] == "ready"
        assert (again["spiffe_id"], again["serial"]) == (first["spiffe_id"], first["serial"])
        assert researcher.sidecar is not None
        assert "reusing the persisted certificate" in researcher.sidecar.output()
        wait_for(lambda: reaches(messages, writer), what="writer → restarted researcher over mTLS")
        with grpc.insecure_channel(control_plane.address) as channel:
            tokens = control_pb2_grpc.ControlPlaneStub(channel).ListJoinTokens(
                control_pb2.ListJoinTokensRequest(all=True), metadata=(("authorization", f"Bearer {TOKEN}"),)
            )
        assert [t.uses for t in tokens.tokens if t.agent == "researcher"] == [1], "one enrollment, at the first start"


class _Impostor(grpc.GenericRpcHandler):
    """Serves the researcher's manifest with a mesh certificate of another agent; counts what reaches it."""

    def __init__(self, manifest: Any) -> None:
        self._manifest = manifest
        self.calls: list[str] = []

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        self.calls.append(details.method)
        if details.method == "/agentmesh.v1.Agent/GetManifest":
            return grpc.unary_unary_rpc_method_handler(
                self._get_manifest, response_serializer=lambda m: m.SerializeToString()
            )
        return None

    async def _get_manifest(self, request: bytes, context: grpc.aio.ServicerContext) -> Any:
        return self._manifest


async def _until(check: Any, what: str, timeout: float = 20) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


async def test_the_caller_refuses_a_server_that_is_not_the_agent_it_expects(
    tmp_path: Path, control_plane: ControlPlaneProcess, messages: Messages
) -> None:
    # An instance registers as the researcher, but its certificate (a real one of this mesh) names another agent.
    bootstrap = Bootstrap.load(EXAMPLES / "researcher" / "agent.yaml")
    manifest = build_manifest(load_contract(bootstrap), bootstrap.agent.model_copy(update={"team": TEAM}))
    intruder = await asyncio.to_thread(enroll_as, control_plane, "intruder")
    impostor = _Impostor(manifest)
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((impostor,))
    credentials = grpc.ssl_server_credentials(
        [(intruder.private_key_pem, intruder.certificate_chain_pem)],
        root_certificates=intruder.trust_bundle_pem,
        require_client_auth=True,
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    registrar = Registrar(
        control_plane=control_plane.address,
        manifest=manifest,
        address=f"127.0.0.1:{port}",
        admin_address=f"127.0.0.1:{free_port()}",
        zone="",
        healthy=lambda: True,
        identity=lambda: intruder,
    )
    registering = asyncio.ensure_future(registrar.run())
    try:
        await _until(registrar.registered.is_set, "the impostor's registration")
        with mtls_agent(tmp_path, control_plane.address, "writer") as writer:
            clusters = lambda: admin_json(writer.ports, "/config_dump")["clusters"]  # noqa: E731
            await _until(lambda: "agent/researcher/v1" in clusters(), "the researcher's cluster at the writer")
            request = messages("research.v1.SearchRequest", query="who are you", max_results=1)
            async with grpc.aio.insecure_channel(f"127.0.0.1:{writer.ports.egress_grpc}") as egress:
                call = egress.unary_unary(
                    SEARCH, request_serializer=lambda m: m.SerializeToString(), response_deserializer=None
                )
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await call(request, metadata=(("x-agentmesh-target", "researcher"),), timeout=10)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            assert impostor.calls == [], "nothing reached the impostor: the handshake failed first"
            assert known_target(writer, f"127.0.0.1:{port}") == {}
    finally:
        registering.cancel()
        await asyncio.gather(registering, return_exceptions=True)
        await server.stop(None)
