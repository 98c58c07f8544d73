"""The spoofing suite: every way of passing for another agent is refused, with the right status, and counted.

Real processes: a control plane with its CA (trust domain agentmesh.local);
the researcher behind a `strict` mTLS sidecar and the writer behind a
`permissive` one, both enrolled with join tokens and both under default-deny
AccessPolicies that admit only the planner; a second control plane, with
another CA and trust domain, as the source of foreign certificates. The
attacker is this test process, dialling the sidecars' inbound ports directly
with what it could get hold of: no certificate, a self-signed one, one from
the other mesh, an expired one signed by the mesh's own CA, the valid
certificate of another agent, identity headers, used and expired join tokens.

Expected refusals (docs/policy.md, docs/identity.md):

- refused in the TLS handshake: UNAVAILABLE. The refusing sidecar never sees
  the call; grpcio has no hook on failed handshakes, so these are the one
  kind of attempt no process can count;
- refused by access policy: PERMISSION_DENIED, counted in the callee's
  `agentmesh_access_denied_total{source_agent,policy}` (and, without TLS, in
  `agentmesh_inbound_plaintext_requests_total`);
- refused join tokens: UNAUTHENTICATED, counted in the control plane's
  `agentmesh_identity_requests_refused_total{operation,reason}`.

The suite prints "N attempts, 0 admitted" and asserts it.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format, struct_pb2

from agentmesh.identity.client import IdentityError
from agentmesh.identity.material import IdentityMaterial
from agentmesh.identity.spiffe import SpiffeId
from agentmesh.v1 import agent_pb2
from tests.integration.admin import Admin, document
from tests.integration.controlplane import ControlPlaneProcess
from tests.integration.mesh import AgentUnderTest, Messages, create_join_token, enroll, mtls_agent, raw_unary, status_of
from tests.integration.procs import metric, wait_for
from tests.pki import HOUR, control_plane_root, now, self_signed, workload_material

TRUST_DOMAIN = "agentmesh.local"
OTHER_TRUST_DOMAIN = "other.example"
TEAM = "examples"
SEARCH = "/research.v1.Researcher/Search"
DRAFT = "/writing.v1.Writer/Draft"
INVOKE = "/agentmesh.v1.Agent/Invoke"
FORGED = (("x-agentmesh-source-agent", "planner"), ("x-agentmesh-source-team", TEAM))

RESEARCHER = SpiffeId(TRUST_DOMAIN, TEAM, "researcher")
WRITER = SpiffeId(TRUST_DOMAIN, TEAM, "writer")
PLANNER = SpiffeId(TRUST_DOMAIN, TEAM, "planner")


def only_the_planner(target: str, method: str) -> dict[str, object]:
    return document(
        "AccessPolicy",
        f"{target}-access",
        {
            "target": target,
            "default_action": "deny",
            "rules": [
                {
                    "name": "planner-only",
                    "action": "allow",
                    "from": {"agents": ["planner"]},
                    "to": {"methods": [method]},
                }
            ],
        },
    )


def expired_certificate(ca_dir: Path, spiffe_id: SpiffeId, bundle: bytes) -> IdentityMaterial:
    """A certificate for `spiffe_id` signed by the mesh's own root, whose validity ended an hour ago."""
    root, root_key = control_plane_root(ca_dir)
    start = now() - 3 * HOUR
    return workload_material(
        spiffe_id, root.subject, root_key, bundle_pem=bundle, not_before=start, not_after=start + 2 * HOUR
    )


@dataclass
class Mesh:
    control_plane: ControlPlaneProcess
    other: ControlPlaneProcess
    researcher: AgentUnderTest
    writer: AgentUnderTest
    bundle: bytes
    planner: IdentityMaterial
    writer_identity: IdentityMaterial
    foreign_planner: IdentityMaterial
    expired_planner: IdentityMaterial
    search: bytes
    draft: bytes

    def channel(self, target: AgentUnderTest, server: SpiffeId, client: IdentityMaterial | None) -> grpc.Channel:
        """A channel to `target`'s inbound port: plaintext without `client`, else mTLS as `client`.

        The attacker checks the server with the mesh's real (public) trust bundle, so a refusal is always the
        server refusing the client, never the other way round.
        """
        address = target.ports.inbound_address
        if client is None:
            return grpc.insecure_channel(address)
        credentials = grpc.ssl_channel_credentials(
            root_certificates=self.bundle,
            private_key=client.private_key_pem,
            certificate_chain=client.certificate_chain_pem,
        )
        return grpc.secure_channel(address, credentials, options=[("grpc.ssl_target_name_override", server.dns_name)])


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    tmp = tmp_path_factory.mktemp("spoofing")
    control_plane = ControlPlaneProcess(tmp, tmp / "cp.db", "--ca-dir", str(tmp / "ca"))
    other = ControlPlaneProcess(
        tmp, tmp / "other.db", "--trust-domain", OTHER_TRUST_DOMAIN, "--ca-dir", str(tmp / "other-ca")
    )
    try:
        admin = Admin(control_plane.address)
        try:
            admin.apply([only_the_planner("researcher", SEARCH[1:]), only_the_planner("writer", DRAFT[1:])])
        finally:
            admin.close()
        with (
            mtls_agent(tmp, control_plane.address, "researcher", identity={"mode": "strict"}) as researcher,
            mtls_agent(tmp, control_plane.address, "writer", identity={"mode": "permissive"}) as writer,
        ):
            messages = Messages()
            planner = enroll(control_plane.address, create_join_token(control_plane.address, "planner"))
            yield Mesh(
                control_plane=control_plane,
                other=other,
                researcher=researcher,
                writer=writer,
                bundle=planner.trust_bundle_pem,
                planner=planner,
                writer_identity=enroll(control_plane.address, create_join_token(control_plane.address, "writer")),
                foreign_planner=enroll(other.address, create_join_token(other.address, "planner", team=TEAM)),
                expired_planner=expired_certificate(tmp / "ca", PLANNER, planner.trust_bundle_pem),
                search=messages("research.v1.SearchRequest", query="spoof", max_results=1).SerializeToString(),
                draft=messages("writing.v1.DraftRequest", topic="spoof").SerializeToString(),
            )
    finally:
        other.process.stop()
        control_plane.process.stop()


def search(mesh: Mesh, client: IdentityMaterial | None, metadata: tuple[tuple[str, str], ...] = ()) -> grpc.StatusCode:
    with mesh.channel(mesh.researcher, RESEARCHER, client) as channel:
        return status_of(lambda: raw_unary(channel, SEARCH, mesh.search, timeout=5, metadata=metadata))


def draft(mesh: Mesh, client: IdentityMaterial | None, metadata: tuple[tuple[str, str], ...] = ()) -> grpc.StatusCode:
    with mesh.channel(mesh.writer, WRITER, client) as channel:
        return status_of(lambda: raw_unary(channel, DRAFT, mesh.draft, timeout=5, metadata=metadata))


def invoke_search(mesh: Mesh, client: IdentityMaterial) -> grpc.StatusCode:
    """The generic Agent.Invoke, as a way around a rule on the typed method."""
    payload = struct_pb2.Struct()
    json_format.ParseDict({"query": "spoof", "max_results": 1}, payload)
    request = agent_pb2.InvokeRequest(skill=SEARCH[1:], json=payload).SerializeToString()
    with mesh.channel(mesh.researcher, RESEARCHER, client) as channel:
        return status_of(lambda: raw_unary(channel, INVOKE, request, timeout=5))


def enrollment(control_plane: ControlPlaneProcess, token: str) -> grpc.StatusCode:
    try:
        enroll(control_plane.address, token)
    except IdentityError as error:
        assert error.code is not None, error
        return error.code
    return grpc.StatusCode.OK


@dataclass(frozen=True)
class Attempt:
    name: str
    expected: grpc.StatusCode
    code: grpc.StatusCode
    counted_in: str

    @property
    def admitted(self) -> bool:
        return self.code == grpc.StatusCode.OK


def test_spoofing_attempts_are_all_refused_and_counted(mesh: Mesh, capsys: pytest.CaptureFixture[str]) -> None:
    # Access policy is in force (xDS delivered) once another agent's valid certificate is refused;
    # until then both sidecars admit everyone, as agents without an AccessPolicy do.
    wait_for(lambda: search(mesh, mesh.writer_identity) == grpc.StatusCode.PERMISSION_DENIED, what="researcher RBAC")
    wait_for(lambda: draft(mesh, None) == grpc.StatusCode.PERMISSION_DENIED, what="writer RBAC")
    # The legitimate caller gets through: refusals below are about identity, not a broken setup.
    assert search(mesh, mesh.planner) == grpc.StatusCode.OK
    assert search(mesh, mesh.planner, FORGED) == grpc.StatusCode.OK
    assert draft(mesh, mesh.planner) == grpc.StatusCode.OK

    researcher, writer, cp = mesh.researcher.ports.admin_url, mesh.writer.ports.admin_url, mesh.control_plane
    denied = "agentmesh_access_denied_total"
    plaintext = "agentmesh_inbound_plaintext_requests_total"
    refused = "agentmesh_identity_requests_refused_total"
    before = {
        "researcher writer": metric(researcher, denied, source_agent="writer", policy="default-deny"),
        "writer unknown": metric(writer, denied, source_agent="unknown", policy="default-deny"),
        "writer plaintext": metric(writer, plaintext, agent="writer"),
        "enroll refused": metric(cp.http_url, refused, operation="enroll"),
    }
    used = create_join_token(cp.address, "planner")
    assert enrollment(cp, used) == grpc.StatusCode.OK
    issued = time.monotonic()
    expiring = create_join_token(cp.address, "planner", ttl=datetime.timedelta(seconds=1))
    unavailable, denied_code, unauthenticated = (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
    )
    handshake = "nowhere: refused in the TLS handshake"
    rbac_researcher = "researcher agentmesh_access_denied_total{source_agent=writer}"
    plan: list[tuple[str, grpc.StatusCode, str, Callable[[], grpc.StatusCode]]] = [
        ("plaintext caller (strict)", unavailable, handshake, lambda: search(mesh, None)),
        (
            "forged identity headers, no certificate (strict)",
            unavailable,
            handshake,
            lambda: search(mesh, None, FORGED),
        ),
        (
            "forged identity headers, no certificate (permissive)",
            denied_code,
            "writer agentmesh_access_denied_total{source_agent=unknown}, agentmesh_inbound_plaintext_requests_total",
            lambda: draft(mesh, None, FORGED),
        ),
        (
            "self-signed certificate claiming the planner",
            unavailable,
            handshake,
            lambda: search(mesh, self_signed(PLANNER, bundle_pem=mesh.bundle)),
        ),
        (
            "planner certificate from another trust domain's CA",
            unavailable,
            handshake,
            lambda: search(mesh, mesh.foreign_planner),
        ),
        (
            "expired planner certificate from the mesh CA",
            unavailable,
            handshake,
            lambda: search(mesh, mesh.expired_planner),
        ),
        (
            "valid certificate of the wrong agent",
            denied_code,
            rbac_researcher,
            lambda: search(mesh, mesh.writer_identity),
        ),
        (
            "valid certificate of the wrong agent with forged identity headers",
            denied_code,
            rbac_researcher,
            lambda: search(mesh, mesh.writer_identity, FORGED),
        ),
        (
            "valid certificate of the wrong agent through Agent.Invoke",
            denied_code,
            rbac_researcher,
            lambda: invoke_search(mesh, mesh.writer_identity),
        ),
        (
            "replayed join token",
            unauthenticated,
            "control plane agentmesh_identity_requests_refused_total{operation=enroll}",
            lambda: enrollment(cp, used),
        ),
    ]
    attempts = [Attempt(name, expected, run(), where) for name, expected, where, run in plan]
    # The expiring token is used only once its lifetime has surely passed: never while it is still valid.
    time.sleep(max(0.0, issued + 1.5 - time.monotonic()))
    attempts.append(
        Attempt(
            "expired join token",
            unauthenticated,
            enrollment(cp, expiring),
            "control plane agentmesh_identity_requests_refused_total{operation=enroll}",
        )
    )

    admitted = [a for a in attempts if a.admitted]
    with capsys.disabled():
        print("\nspoofing suite:")
        for attempt in attempts:
            outcome = "ADMITTED" if attempt.admitted else attempt.code.name
            print(f"  {attempt.name}: {outcome} (expected {attempt.expected.name}; counted in {attempt.counted_in})")
        print(f"{len(attempts)} attempts, {len(admitted)} admitted")
    assert admitted == []
    assert [(a.name, a.code) for a in attempts] == [(a.name, a.expected) for a in attempts]

    # Each refusal a process could see is counted there.
    assert metric(researcher, denied, source_agent="writer", policy="default-deny") - before["researcher writer"] == 3
    assert metric(writer, denied, source_agent="unknown", policy="default-deny") - before["writer unknown"] == 1
    assert metric(writer, plaintext, agent="writer") - before["writer plaintext"] == 1
    assert metric(cp.http_url, refused, operation="enroll") - before["enroll refused"] == 2
    # Headers never labelled anything: no denial was ever counted for a "planner".
    assert metric(researcher, denied, source_agent="planner") == 0
    assert metric(writer, denied, source_agent="planner") == 0
    # The claim is kept in the access log, next to the proven identity.
    assert mesh.researcher.sidecar is not None
    sidecar = mesh.researcher.sidecar
    wait_for(
        lambda: f'"caller":"{WRITER.uri}"' in sidecar.output() and '"claimed_source":"planner"' in sidecar.output(),
        what="access log line with the caller's identity and the claimed source",
    )
    # Both sidecars kept serving the legitimate caller throughout.
    assert search(mesh, mesh.planner) == grpc.StatusCode.OK
    assert draft(mesh, mesh.planner) == grpc.StatusCode.OK
