"""deploy/compose/join-tokens.sh against a real control plane, with the arguments compose gives it.

The script mints one single-use join token per sidecar through the admin API
and writes each into the folder that sidecar mounts. Here it runs with `sh`
(dash, as in the image) and the `agentmesh` of this virtualenv: each token it
writes enrolls once, as the agent and team the sidecar's agent.yaml names,
and the sidecar would pick it up (the identity plan of its agent.yaml). Bad
arguments, a refused admin token and an unreachable control plane stop it
with the CLI's exit codes and leave no half-written token.
"""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import yaml

from agentmesh.identity.client import IdentityClient, IdentityError
from agentmesh.identity.keys import generate_key
from sidecar.config.bootstrap import Bootstrap
from sidecar.identity import plan_identity
from tests.integration.controlplane import TOKEN as ADMIN
from tests.integration.controlplane import ControlPlaneProcess
from tests.integration.procs import free_port
from tests.unit.deploy.conftest import DEPLOY

SCRIPT = DEPLOY / "compose" / "join-tokens.sh"
COMPOSE = DEPLOY / "compose" / "compose.yaml"
AGENTS = DEPLOY / "compose" / "agents"


def compose_arguments() -> list[str]:
    return [str(a) for a in yaml.safe_load(COMPOSE.read_text())["services"]["join-tokens"]["command"]]


def run_script(tokens: Path, *args: str, control_plane: str, admin_token: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        # The `agentmesh` next to this interpreter, as the image has it on PATH.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "AGENTMESH_CONTROL_PLANE": control_plane,
        "AGENTMESH_TOKEN": admin_token,
        "JOIN_TOKENS_DIR": str(tokens),
    }
    return subprocess.run(["sh", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=120, check=False)


async def enroll(address: str, token: str) -> str:
    async with grpc.aio.insecure_channel(address) as channel:
        material = await IdentityClient(channel).enroll(token, generate_key())
    return material.spiffe_id.uri


@pytest.fixture(scope="module")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlaneProcess]:
    folder = tmp_path_factory.mktemp("control-plane")
    process = ControlPlaneProcess(folder, folder / "cp.db")
    yield process
    process.stop()


def test_every_token_enrolls_once_as_the_sidecar_it_is_for(control_plane, tmp_path):
    tokens = tmp_path / "tokens"
    result = run_script(tokens, *compose_arguments(), control_plane=control_plane.address, admin_token=ADMIN)
    assert result.returncode == 0, result.stderr
    for argument in compose_arguments():
        service, _, scope = argument.partition("=")
        agent, _, team = scope.partition("/")
        token_file = tokens / service / "token"
        # Only the owner (the image's user, which both the script and the sidecars run as) reads it.
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        assert stat.S_IMODE(token_file.parent.stat().st_mode) == 0o700
        token = token_file.read_text().strip()
        assert token.startswith("amjt.")
        assert f"join-tokens: {service} may enroll once as {agent} of team {team}" in result.stdout
        assert (
            asyncio.run(enroll(control_plane.address, token)) == f"spiffe://agentmesh.local/team/{team}/agent/{agent}"
        )
        with pytest.raises(IdentityError, match="already used 1 of 1"):
            asyncio.run(enroll(control_plane.address, token))
    assert sorted(p.name for p in tokens.iterdir()) == sorted(a.partition("=")[0] for a in compose_arguments())
    assert not list(tokens.glob("*/token.new"))


def test_the_sidecar_enrolls_with_the_written_token_and_renews_after_a_restart(control_plane, tmp_path):
    """The sidecar's identity plan, from its compose agent.yaml with the token where compose mounts it."""
    tokens = tmp_path / "tokens"
    result = run_script(tokens, "planner=planner/orchestration", control_plane=control_plane.address, admin_token=ADMIN)
    assert result.returncode == 0, result.stderr
    data = yaml.safe_load((AGENTS / "planner.yaml").read_text())
    assert data["identity"]["join_token_file"] == "/etc/agentmesh/join-token/token"
    data["identity"]["join_token_file"] = str(tokens / "planner" / "token")
    bootstrap = Bootstrap.model_validate(data, context={"base_dir": AGENTS})
    plan = plan_identity(bootstrap, environ={}, persisted=lambda _: False)
    assert plan.enabled and plan.mode == "permissive"
    assert plan.join_token == (tokens / "planner" / "token").read_text().strip()
    assert "join token from identity.join_token_file" in plan.reason
    restarted = plan_identity(bootstrap, environ={}, persisted=lambda directory: directory == plan.dir)
    assert restarted.enabled and "identity persisted in /var/lib/agentmesh/identity" in restarted.reason


def test_a_second_run_replaces_the_tokens(control_plane, tmp_path):
    tokens = tmp_path / "tokens"
    seen = []
    for _ in range(2):
        result = run_script(tokens, "writer=writer/content", control_plane=control_plane.address, admin_token=ADMIN)
        assert result.returncode == 0, result.stderr
        seen.append((tokens / "writer" / "token").read_text())
    assert seen[0] != seen[1]


@pytest.mark.parametrize(
    "arguments",
    [
        [],
        ["researcher"],
        ["researcher=researcher"],
        ["=researcher/research"],
        ["../up=researcher/research"],
        ["researcher=researcher/research/x"],
        ["Researcher=researcher/research"],
        ["researcher=/research"],
    ],
)
def test_malformed_arguments_exit_2_before_any_token_is_minted(control_plane, tmp_path, arguments):
    tokens = tmp_path / "tokens"
    given = ["writer=writer/content", *arguments] if arguments else []
    result = run_script(tokens, *given, control_plane=control_plane.address, admin_token=ADMIN)
    assert result.returncode == 2
    assert result.stderr.startswith("join-tokens: ")
    assert "SERVICE=AGENT/TEAM" in result.stderr
    assert not tokens.exists()


def test_a_refused_admin_token_exits_1_and_writes_nothing(control_plane, tmp_path):
    tokens = tmp_path / "tokens"
    result = run_script(tokens, "writer=writer/content", control_plane=control_plane.address, admin_token="wrong")
    assert result.returncode == 1
    assert "invalid token" in result.stderr
    assert "join-tokens: no join token for writer (writer of team content)" in result.stderr
    assert list((tokens / "writer").iterdir()) == []


def test_an_unreachable_control_plane_exits_3(tmp_path):
    tokens = tmp_path / "tokens"
    result = run_script(tokens, "writer=writer/content", control_plane=f"127.0.0.1:{free_port()}", admin_token="x")
    assert result.returncode == 3
    assert "cannot reach the control plane" in result.stderr
    assert list((tokens / "writer").iterdir()) == []
