"""`agentmesh up` and mTLS: join tokens from the embedded control plane, each replica's identity settings."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agentmesh.local.control_plane import EmbeddedControlPlane
from agentmesh.local.identity import JoinTokenError, JoinTokens
from agentmesh.local.meshfile import MeshAgent, MeshFile
from agentmesh.local.replicas import AgentReplicas, ReplicaIdentity, ReplicaPorts, write_replica_config
from agentmesh.local.supervisor import Supervisor
from sidecar.config.bootstrap import Bootstrap
from sidecar.identity import JOIN_TOKEN_ENV, plan_identity

ROOT = Path(__file__).resolve().parents[3]
RESEARCHER = ROOT / "examples" / "agents" / "researcher" / "agent.yaml"


@pytest.fixture
async def control_plane(tmp_path: Path) -> AsyncIterator[EmbeddedControlPlane]:
    embedded = EmbeddedControlPlane(listen="127.0.0.1:0", http="127.0.0.1:0", db=tmp_path / "cp.db", token="admin")
    await embedded.start()
    try:
        yield embedded
    finally:
        await embedded.stop()


async def test_join_tokens_come_from_the_admin_api(control_plane: EmbeddedControlPlane) -> None:
    tokens = JoinTokens(address=control_plane.address("127.0.0.1:0"), admin_token="admin")
    first = await tokens.create(agent="researcher", team="research", description="test")
    second = await tokens.create(agent="researcher", team="research", description="test")
    assert first and second and first != second
    assert tokens.minted == 2
    assert "admin" not in repr(tokens)


async def test_a_refused_token_says_why(control_plane: EmbeddedControlPlane) -> None:
    tokens = JoinTokens(address=control_plane.address("127.0.0.1:0"), admin_token="wrong")
    with pytest.raises(JoinTokenError, match="refused a join token for researcher: UNAUTHENTICATED"):
        await tokens.create(agent="researcher", team="research", description="test")


def test_the_example_mesh_runs_the_entry_agent_permissive_and_the_rest_strict() -> None:
    mesh = MeshFile.load(ROOT / "examples" / "mesh.yaml")
    modes = {entry.name: entry.mtls or Bootstrap.load(entry.sidecar).identity.mode for entry in mesh.agents}
    assert modes.pop("planner") == "permissive"
    assert set(modes.values()) == {"strict"}


def _group(tmp_path: Path, *, mtls: str | None, tokens: JoinTokens | None) -> AgentReplicas:
    entry = MeshAgent.model_validate(
        {"name": "researcher", "command": ["{python}", "-c", "pass"], "sidecar": str(RESEARCHER), "mtls": mtls}
    )
    return AgentReplicas(
        entry=entry,
        bootstrap=Bootstrap.load(RESEARCHER),
        supervisor=Supervisor(),
        base_dir=tmp_path,
        replicas_dir=tmp_path,
        log_dir=tmp_path,
        control_plane="127.0.0.1:1",
        on_event=lambda name, message: None,
        sidecar_command=(sys.executable, "-c", "pass"),
        join_tokens=tokens,
    )


def test_each_replica_gets_its_own_identity_folder_and_the_entry_mode(tmp_path: Path) -> None:
    tokens = JoinTokens(address="127.0.0.1:1", admin_token="t")
    assert _group(tmp_path, mtls=None, tokens=tokens).identity("researcher-1") == ReplicaIdentity(
        "strict", tmp_path / "researcher-1.identity"
    )
    assert _group(tmp_path, mtls="permissive", tokens=tokens).identity("researcher-0").mode == "permissive"  # type: ignore[union-attr]
    assert _group(tmp_path, mtls="off", tokens=tokens).identity("researcher-0") is None
    assert _group(tmp_path, mtls=None, tokens=None).identity("researcher-0") is None


def test_the_replica_config_names_the_identity_folder_and_drops_a_token_of_the_original(tmp_path: Path) -> None:
    original = Bootstrap.load(RESEARCHER).model_copy(
        update={"identity": Bootstrap.load(RESEARCHER).identity.model_copy(update={"join_token": "of-the-original"})}
    )
    ports = ReplicaPorts.for_replica(original, 1)
    identity = ReplicaIdentity("permissive", tmp_path / "r-1.identity")
    path = write_replica_config(
        original, ports, source=RESEARCHER, path=tmp_path / "r-1.yaml", control_plane="127.0.0.1:1", identity=identity
    )
    generated = Bootstrap.load(path)
    assert generated.identity.mode == "permissive" and generated.identity.dir == tmp_path / "r-1.identity"
    assert generated.identity.join_token is None
    assert "of-the-original" not in path.read_text()
    plan = plan_identity(generated, environ={JOIN_TOKEN_ENV: "minted"}, persisted=lambda _: False)
    assert plan.enabled and plan.join_token == "minted"
    plain = write_replica_config(
        original, ports, source=RESEARCHER, path=tmp_path / "r-2.yaml", control_plane="127.0.0.1:1"
    )
    assert not plan_identity(Bootstrap.load(plain), environ={JOIN_TOKEN_ENV: ""}, persisted=lambda _: False).enabled


async def test_every_sidecar_start_gets_a_fresh_token_in_its_environment(
    tmp_path: Path, control_plane: EmbeddedControlPlane
) -> None:
    tokens = JoinTokens(address=control_plane.address("127.0.0.1:0"), admin_token="admin")
    group = _group(tmp_path, mtls=None, tokens=tokens)
    try:
        replica = await group.add()
        first = replica.sidecar.env[JOIN_TOKEN_ENV]
        assert first
        assert replica.sidecar.prepare is not None
        await replica.sidecar.prepare()  # what a restart does
        assert replica.sidecar.env[JOIN_TOKEN_ENV] not in ("", first)
        assert tokens.minted == 2
    finally:
        await group.supervisor.stop(grace=5)


async def test_a_failed_mint_still_starts_the_sidecar_and_reports_it(tmp_path: Path) -> None:
    events: list[str] = []
    group = _group(tmp_path, mtls=None, tokens=JoinTokens(address="127.0.0.1:1", admin_token="t"))
    group.on_event = lambda name, message: events.append(message)
    try:
        replica = await group.add()
        assert replica.sidecar.env[JOIN_TOKEN_ENV] == ""
        assert any(e.startswith("no join token for researcher-0:") for e in events)
    finally:
        await group.supervisor.stop(grace=5)
