"""Admin API roles against a real `agentmesh control-plane` process.

Credentials are made with the real CLI; the role table is exercised over
gRPC (one call per operation and role); team scope, expiry, revocation and
authorship are checked through the CLI a user would run. Agents are
registered over the Registration stream, as a sidecar would, so their teams
come from the registry.
"""

from __future__ import annotations

import contextlib
import json
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2

from agentmesh.v1 import control_pb2, control_pb2_grpc, manifest_pb2
from tests.integration.controlplane import TOKEN, ControlPlaneProcess
from tests.integration.procs import free_port, wait_for

SERVICE = control_pb2.DESCRIPTOR.services_by_name["ControlPlane"]
VIEWER, OPERATOR, ADMIN = "viewer", "operator", "admin"
RANK = {VIEWER: 0, OPERATOR: 1, ADMIN: 2}


def config(name: str, target: str, model: str = "small") -> str:
    return (
        f"apiVersion: agentmesh.io/v1\nkind: AgentConfig\nmetadata: {{name: {name}}}\n"
        f"spec: {{target: '{target}', values: {{model: {model}}}}}\n"
    )


MESH_WIDE = "apiVersion: agentmesh.io/v1\nkind: AccessPolicy\nmetadata: {name: mesh}\nspec: {target: '*'}\n"


def apply_request(*contents: str, dry_run: bool = False) -> control_pb2.ApplyPoliciesRequest:
    files = [control_pb2.PolicyFile(name=f"f{i}.yaml", content=c) for i, c in enumerate(contents)]
    return control_pb2.ApplyPoliciesRequest(files=files, dry_run=dry_run)


# (operation, request, the lowest role allowed). Changes are dry runs, so every role meets the same state.
OPERATIONS: list[tuple[str, Any, str]] = [
    ("GetPolicies", control_pb2.GetPoliciesRequest(), VIEWER),
    ("PolicyHistory", control_pb2.PolicyHistoryRequest(), VIEWER),
    ("ListAgents", control_pb2.ListAgentsRequest(), VIEWER),
    ("ProxyStatus", control_pb2.ProxyStatusRequest(), VIEWER),
    ("Check", control_pb2.CheckRequest(), VIEWER),
    ("WhoAmI", control_pb2.WhoAmIRequest(), VIEWER),
    ("GetCertificateAuthority", control_pb2.GetCertificateAuthorityRequest(), VIEWER),
    ("ApplyPolicies", apply_request(config("researcher-model", "researcher"), dry_run=True), OPERATOR),
    ("DeletePolicy", control_pb2.DeletePolicyRequest(kind="AgentConfig", name="seed", dry_run=True), OPERATOR),
    ("RollbackPolicies", control_pb2.RollbackPoliciesRequest(version=0, dry_run=True), OPERATOR),
    ("ListCredentials", control_pb2.ListCredentialsRequest(all=True), ADMIN),
    ("CreateCredential", control_pb2.CreateCredentialRequest(name="made", role=VIEWER), ADMIN),
    ("RevokeCredential", control_pb2.RevokeCredentialRequest(id="no-such-id"), ADMIN),
    ("ListJoinTokens", control_pb2.ListJoinTokensRequest(), ADMIN),
    ("CreateJoinToken", control_pb2.CreateJoinTokenRequest(agent="researcher"), ADMIN),
    ("RevokeJoinToken", control_pb2.RevokeJoinTokenRequest(id="no-such-id"), ADMIN),
]


class AdminChannel:
    """Admin API calls by method name with a given token; answers or the RpcError."""

    def __init__(self, address: str) -> None:
        self._channel = grpc.insecure_channel(address)

    def close(self) -> None:
        self._channel.close()

    def call(self, method: str, request: Any, token: str) -> Any:
        output = getattr(control_pb2, SERVICE.methods_by_name[method].output_type.name)
        invoke = self._channel.unary_unary(
            f"/{SERVICE.full_name}/{method}",
            request_serializer=lambda message: message.SerializeToString(),
            response_deserializer=output.FromString,
        )
        try:
            return invoke(request, metadata=(("authorization", f"Bearer {token}"),), timeout=10)
        except grpc.RpcError as exc:
            return exc


def status(answer: Any) -> grpc.StatusCode:
    return answer.code() if isinstance(answer, grpc.RpcError) else grpc.StatusCode.OK


@contextlib.contextmanager
def registered(address: str, agent: str, team: str, service: str) -> Iterator[None]:
    """One agent instance registered (and heartbeating) over the Registration stream, as a sidecar does."""
    stop = threading.Event()
    manifest = manifest_pb2.Manifest(name=agent, version="v1", team=team, services=[service])

    def reports() -> Iterator[control_pb2.InstanceReport]:
        yield control_pb2.InstanceReport(manifest=manifest, address=f"127.0.0.1:{free_port()}", healthy=True)
        while not stop.wait(1.0):
            yield control_pb2.InstanceReport(healthy=True)

    with grpc.insecure_channel(address) as channel:
        stream = control_pb2_grpc.RegistrationStub(channel).Register(reports())
        next(stream)
        try:
            yield
        finally:
            stop.set()
            stream.cancel()


def create_credential(cp: ControlPlaneProcess, name: str, role: str, *options: str, token: str = TOKEN) -> str:
    created = cp.cli("credential", "create", name, "--role", role, *options, AGENTMESH_TOKEN=token)
    assert created.returncode == 0, created.stderr
    return created.stdout.strip()


def refusals(cp: ControlPlaneProcess) -> dict[tuple[str, str], float]:
    """agentmesh_admin_requests_refused_total by (method, reason), from the control plane's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{cp.http_port}/metrics", timeout=5) as response:
        text = response.read().decode()
    found: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        if line.startswith("agentmesh_admin_requests_refused_total{"):
            labels, _, value = line.rpartition(" ")
            pairs = dict(item.split("=", 1) for item in labels[labels.index("{") + 1 : -1].split(","))
            found[(pairs["method"].strip('"'), pairs["reason"].strip('"'))] = float(value)
    return found


@pytest.fixture
def admin(control_plane: ControlPlaneProcess) -> Iterator[AdminChannel]:
    channel = AdminChannel(control_plane.address)
    yield channel
    channel.close()


def test_each_role_may_do_what_the_table_says_and_nothing_more(control_plane: ControlPlaneProcess, admin: AdminChannel):
    seeded = admin.call("ApplyPolicies", apply_request(config("seed", "researcher")), TOKEN)
    assert status(seeded) is grpc.StatusCode.OK
    tokens = {role: create_credential(control_plane, f"{role}-user", role) for role in (VIEWER, OPERATOR, ADMIN)}

    outcomes: dict[tuple[str, str], str] = {}
    for role, token in tokens.items():
        for method, request, lowest in OPERATIONS:
            answer = admin.call(method, request, token)
            code = status(answer)
            if RANK[role] >= RANK[lowest]:
                assert code not in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED), (
                    role,
                    method,
                    answer,
                )
                outcomes[(role, method)] = "allowed"
            else:
                assert code is grpc.StatusCode.PERMISSION_DENIED, (role, method, answer)
                assert f"{method} needs role {lowest}" in answer.details()
                outcomes[(role, method)] = "refused"

    assert sum(o == "refused" for o in outcomes.values()) == 9 + 6  # viewer: 3 + 6 refused; operator: 6
    counted = refusals(control_plane)
    assert counted[("ApplyPolicies", "role")] == 1
    assert counted[("CreateCredential", "role")] == 2
    # Dry runs and refusals changed nothing: only the seed version exists, made by the bootstrap admin.
    history = admin.call("PolicyHistory", control_pb2.PolicyHistoryRequest(), tokens[VIEWER])
    assert [(v.version, v.author) for v in history.versions] == [(1, "bootstrap-admin")]
    assert "refused" in control_plane.process.output()


def test_a_team_scoped_operator_changes_only_its_teams_agents(control_plane: ControlPlaneProcess, tmp_path: Path):
    research_yaml = tmp_path / "research.yaml"
    research_yaml.write_text(config("researcher-model", "researcher"))
    research_large = tmp_path / "research-large.yaml"
    research_large.write_text(config("researcher-model", "researcher", "large"))
    writer_yaml = tmp_path / "writer.yaml"
    writer_yaml.write_text(config("writer-model", "writer"))
    ghost_yaml = tmp_path / "ghost.yaml"
    ghost_yaml.write_text(config("ghost-model", "ghost"))
    mesh_yaml = tmp_path / "mesh.yaml"
    mesh_yaml.write_text(MESH_WIDE)

    with (
        registered(control_plane.address, "researcher", "research", "research.v1.Researcher"),
        registered(control_plane.address, "writer", "writing", "writing.v1.Writer"),
    ):
        token = create_credential(control_plane, "research-ops", OPERATOR, "--team", "research", "--ttl", "1d")

        allowed = control_plane.cli("policy", "apply", "-f", str(research_yaml), AGENTMESH_TOKEN=token)
        other_team = control_plane.cli("policy", "apply", "-f", str(writer_yaml), AGENTMESH_TOKEN=token)
        unknown = control_plane.cli("policy", "apply", "-f", str(ghost_yaml), AGENTMESH_TOKEN=token)
        mesh_wide = control_plane.cli("policy", "apply", "-f", str(mesh_yaml), AGENTMESH_TOKEN=token)
        by_admin = control_plane.cli("policy", "apply", "-f", str(writer_yaml))
        delete_other = control_plane.cli("policy", "delete", "ac", "writer-model", AGENTMESH_TOKEN=token)
        changed = control_plane.cli("policy", "apply", "-f", str(research_large), AGENTMESH_TOKEN=token)
        # Back to version 2 changes only researcher's document; back to version 0 would remove writer's too.
        rollback_own = control_plane.cli("policy", "rollback", "2", AGENTMESH_TOKEN=token)
        rollback_both = control_plane.cli("policy", "rollback", "0", AGENTMESH_TOKEN=token)

    assert allowed.returncode == 0, allowed.stderr
    assert allowed.stdout == "agentconfig/researcher-model created\n"
    for refused in (other_team, delete_other):
        assert refused.returncode == 1
        assert "PERMISSION_DENIED" in refused.stderr
        assert "a credential scoped to team research may change only the policies of its agents" in refused.stderr
        assert "out of scope: writer (team writing; AgentConfig/writer-model)" in refused.stderr
    assert unknown.returncode == 1
    assert "ghost (team unknown: the agent is not registered; AgentConfig/ghost-model)" in unknown.stderr
    assert mesh_wide.returncode == 1
    assert "* (mesh-wide: needs a credential not scoped to teams; AccessPolicy/mesh)" in mesh_wide.stderr
    assert by_admin.returncode == 0, by_admin.stderr
    assert changed.returncode == 0, changed.stderr
    assert (rollback_own.returncode, rollback_own.stdout) == (0, "agentconfig/researcher-model configured\n")
    assert rollback_both.returncode == 1
    assert "out of scope: writer (team writing; AgentConfig/writer-model)" in rollback_both.stderr

    history = control_plane.cli("policy", "history", "-o", "json")
    authors = [(int(v["version"]), v["author"]) for v in json.loads(history.stdout)]
    assert authors == [(4, "research-ops"), (3, "research-ops"), (2, "bootstrap-admin"), (1, "research-ops")]
    counted = refusals(control_plane)
    assert counted[("ApplyPolicies", "scope")] == 3
    assert counted[("DeletePolicy", "scope")] == 1
    assert counted[("RollbackPolicies", "scope")] == 1


def test_expired_and_revoked_credentials_are_refused(control_plane: ControlPlaneProcess, admin: AdminChannel):
    brief = admin.call(
        "CreateCredential",
        control_pb2.CreateCredentialRequest(name="brief", role=VIEWER, ttl=duration_pb2.Duration(seconds=1)),
        TOKEN,
    )
    revocable = create_credential(control_plane, "revocable", OPERATOR)
    listed = control_plane.cli("credential", "list", "-o", "json")
    revocable_id = next(c["id"] for c in json.loads(listed.stdout)["credentials"] if c["name"] == "revocable")
    assert control_plane.cli("whoami", AGENTMESH_TOKEN=revocable).returncode == 0

    revoked = control_plane.cli("credential", "revoke", revocable_id)
    after_revoke = control_plane.cli("whoami", AGENTMESH_TOKEN=revocable)

    assert revoked.stdout == f"credential/{revocable_id} (revocable) revoked\n"
    assert after_revoke.returncode == 1
    assert f"credential 'revocable' (id {revocable_id}) was revoked at" in after_revoke.stderr

    def expired() -> bool:
        answer = admin.call("WhoAmI", control_pb2.WhoAmIRequest(), brief.secret)
        return status(answer) is grpc.StatusCode.UNAUTHENTICATED and "expired at" in answer.details()

    wait_for(expired, what="the one-second credential to expire", timeout=15)
    every = control_plane.cli("credential", "list", "--all")
    states = {line.split()[1]: line.split()[4] for line in every.stdout.splitlines()[1:]}
    assert states == {"brief": "expired", "revocable": "revoked"}
    assert control_plane.cli("credential", "list").stdout == ""
    counted = refusals(control_plane)
    assert counted[("WhoAmI", "revoked_token")] == 1
    assert counted[("WhoAmI", "expired_token")] >= 1


def test_credentials_and_authors_survive_a_restart(control_plane: ControlPlaneProcess, tmp_path: Path):
    token = create_credential(control_plane, "release-bot", OPERATOR)
    policy = tmp_path / "p.yaml"
    policy.write_text(config("researcher-model", "researcher"))
    assert control_plane.cli("policy", "apply", "-f", str(policy), AGENTMESH_TOKEN=token).returncode == 0

    control_plane.stop()
    again = ControlPlaneProcess(tmp_path, tmp_path / "cp.db")
    try:
        whoami = again.cli("whoami", "-o", "json", AGENTMESH_TOKEN=token)
        history = again.cli("policy", "history", "-o", "json", AGENTMESH_TOKEN=token)
    finally:
        again.stop()

    assert whoami.returncode == 0, whoami.stderr
    assert (json.loads(whoami.stdout)["name"], json.loads(whoami.stdout)["role"]) == ("release-bot", OPERATOR)
    assert [v["author"] for v in json.loads(history.stdout)] == ["release-bot"]
