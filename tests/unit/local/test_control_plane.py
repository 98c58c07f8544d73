"""The embedded control plane: the example mesh's policies validate against its agents, and go into the store."""

from __future__ import annotations

import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agentmesh.config import ConfigError
from agentmesh.local.control_plane import EmbeddedControlPlane, check_policies
from agentmesh.local.meshfile import MeshFile
from agentmesh.local.state import StateDir, new_token, write_atomically
from sidecar.app import load_contract
from sidecar.config.bootstrap import Bootstrap
from sidecar.contract.manifest import build_manifest

ROOT = Path(__file__).resolve().parents[3]
MESH = MeshFile.load(ROOT / "examples" / "mesh.yaml")
POLICIES = ROOT / "examples" / "policies"


@pytest.fixture
async def control_plane(tmp_path: Path) -> AsyncIterator[EmbeddedControlPlane]:
    embedded = EmbeddedControlPlane(listen="127.0.0.1:0", http="127.0.0.1:0", db=tmp_path / "cp.db", token="t")
    await embedded.start()
    try:
        yield embedded
    finally:
        await embedded.stop()


def register(embedded: EmbeddedControlPlane, *, skip: tuple[str, ...] = ()) -> None:
    """Registers every agent of the example mesh as its sidecar would, with its real manifest."""
    for port, entry in enumerate(MESH.agents, start=7001):
        if entry.name in skip:
            continue
        bootstrap = Bootstrap.load(entry.sidecar)
        contract = load_contract(bootstrap)
        manifest = build_manifest(contract, bootstrap.agent, slo=bootstrap.slo)
        embedded.control_plane.registry.register(
            agent=bootstrap.agent.name,
            version=bootstrap.agent.version,
            team=bootstrap.agent.team,
            address=f"127.0.0.1:{port}",
            services=contract.services,
            manifest=manifest.SerializeToString(),
        )


async def test_the_example_policies_validate_against_the_example_agents(control_plane: EmbeddedControlPlane) -> None:
    register(control_plane)
    assert control_plane.registered("researcher", "127.0.0.1:7001")
    assert not control_plane.registered("researcher", "127.0.0.1:9999")
    outcome = await control_plane.apply([POLICIES], message="examples")
    assert outcome.warnings == ()
    assert outcome.documents == 3
    assert outcome.result.version == control_plane.policy_version() == 1
    assert {str(ref) for ref in outcome.result.added} == {
        "AccessPolicy/researcher-access",
        "AgentConfig/researcher-config",
        "TrafficPolicy/researcher-canary",
    }
    # The same files again: no new version.
    again = await control_plane.apply([POLICIES], message="examples")
    assert not again.result.created and again.result.version == 1


async def test_the_mesh_files_own_policies_apply_to_the_example_mesh(control_plane: EmbeddedControlPlane) -> None:
    register(control_plane)
    outcome = await control_plane.apply(MESH.policies, message="mesh")
    assert outcome.result.created and outcome.warnings == ()


async def test_a_canary_for_a_version_that_is_not_registered_is_refused(control_plane: EmbeddedControlPlane) -> None:
    register(control_plane, skip=("researcher-v2",))
    with pytest.raises(ConfigError) as caught:
        await control_plane.apply([POLICIES / "researcher-traffic.yaml"], message="canary")
    assert any(
        "researcher-traffic.yaml" in str(issue) and "version 'v2' of researcher is not registered" in str(issue)
        for issue in caught.value.issues
    ), caught.value.issues
    assert control_plane.policy_version() == 0


async def test_unregistered_agents_are_warnings(control_plane: EmbeddedControlPlane) -> None:
    outcome = await control_plane.apply([POLICIES / "researcher-config.yaml"], message="config")
    assert outcome.result.created
    assert any("not registered" in str(w) for w in outcome.warnings)


def test_policy_files_are_checked_before_anything_starts(tmp_path: Path) -> None:
    check_policies([POLICIES])
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: agentmesh.io/v1\nkind: TrafficPolicy\nmetadata: {name: c}\nspec:\n  target: researcher\n"
        "  split:\n    - {version: v1, weight: 60}\n    - {version: v2, weight: 60}\n"
    )
    with pytest.raises(ConfigError) as caught:
        check_policies([bad])
    assert [str(i) for i in caught.value.issues] == [f"{bad}:6: spec.split: weights must sum to 100, got 120"]


async def test_a_taken_port_is_an_os_error_and_leaves_nothing_running(tmp_path: Path) -> None:
    first = EmbeddedControlPlane(listen="127.0.0.1:0", http="127.0.0.1:0", db=tmp_path / "a.db", token="t")
    await first.start()
    try:
        second = EmbeddedControlPlane(
            listen="127.0.0.1:0", http=f"127.0.0.1:{first.http_port}", db=tmp_path / "b.db", token="t"
        )
        with pytest.raises(OSError):
            await second.start()
        await second.stop()
    finally:
        await first.stop()


def test_the_token_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    state = StateDir.at(tmp_path / ".agentmesh")
    state.prepare()
    state.token.write_text("old")
    state.token.chmod(0o644)
    token = new_token()
    state.save_token(token)
    assert state.token.read_text() == token + "\n" and len(token) >= 32
    assert stat.S_IMODE(state.token.stat().st_mode) == 0o600
    assert new_token() != token


def test_replica_configs_of_an_earlier_run_are_cleared(tmp_path: Path) -> None:
    state = StateDir.at(tmp_path / ".agentmesh", logs=tmp_path / "logs")
    state.prepare()
    state.reset_replicas()
    (state.replicas / "old-1.yaml").write_text("stale")
    state.reset_replicas()
    assert list(state.replicas.iterdir()) == []
    assert state.logs == tmp_path / "logs" and state.logs.is_dir()
    write_atomically(state.status, "{}")
    assert state.status.read_text() == "{}" and [p.name for p in state.root.iterdir() if p.name.startswith(".")] == []
