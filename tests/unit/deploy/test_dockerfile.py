"""deploy/Dockerfile and .dockerignore, checked without a Docker daemon.

hadolint lints the Dockerfile; the rules the image must keep (multi-stage,
python:3.11-slim, pinned bases, non-root user, `agentmesh` entrypoint) are
read from the parsed instructions; the wheel the builder stage installs is
built and run here as the image would run it.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass

from tests.unit.deploy.conftest import DEPLOY, ROOT, tool

DOCKERFILE = DEPLOY / "Dockerfile"


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str


def instructions() -> list[Instruction]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    found: list[Instruction] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        keyword, _, arguments = line.partition(" ")
        found.append(Instruction(keyword.upper(), arguments.strip()))
    return found


def stages() -> dict[str, list[Instruction]]:
    """Instructions per stage name, in order."""
    result: dict[str, list[Instruction]] = {}
    current: list[Instruction] | None = None
    for instruction in instructions():
        if instruction.keyword == "FROM":
            parts = instruction.arguments.split()
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else f"stage{len(result)}"
            current = result.setdefault(name, [])
        if current is not None:
            current.append(instruction)
    return result


def arg_defaults() -> dict[str, str]:
    defaults = {}
    for instruction in instructions():
        if instruction.keyword == "FROM":
            break
        if instruction.keyword == "ARG" and "=" in instruction.arguments:
            key, _, value = instruction.arguments.partition("=")
            defaults[key] = value
    return defaults


def test_hadolint_finds_nothing():
    result = subprocess.run(
        [str(tool("hadolint")), "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_multi_stage_with_runtime_last():
    names = list(stages())
    assert names[0] == "builder"
    assert names[-1] == "runtime"  # the default target
    assert "examples" in names


def test_bases_are_pinned_python_slim_images():
    defaults = arg_defaults()
    known = set(stages())
    for name, body in stages().items():
        base = body[0].arguments.split()[0]
        if base in known:
            continue
        image = defaults.get(base.strip("${}"), base) if base.startswith("$") else base
        assert image.startswith("python:3.11-slim"), (name, image)
        assert ":" in image
        assert not image.endswith(":latest"), (name, image)


def test_shipped_stages_run_as_a_non_root_user():
    for name in ("runtime", "examples"):
        users = [i.arguments for i in stages()[name] if i.keyword == "USER"]
        assert users, f"stage {name} sets no USER"
        user = users[-1].split(":")[0]
        assert user not in ("root", "0"), name
        assert user.isdigit(), "a numeric user lets Kubernetes check runAsNonRoot"


def test_runtime_stage_has_no_build_tools_and_the_agentmesh_entrypoint():
    runtime_and_base = [*stages()["base"], *stages()["runtime"]]
    commands = " ".join(i.arguments for i in runtime_and_base if i.keyword == "RUN")
    for tool_name in ("apt-get", "gcc", "build-essential", "pip install"):
        assert tool_name not in commands
    entrypoints = [json.loads(i.arguments) for i in stages()["runtime"] if i.keyword == "ENTRYPOINT"]
    assert entrypoints == [["agentmesh"]]
    assert not any(i.keyword == "HEALTHCHECK" for i in instructions())


def _ignored(path: str, patterns: list[str]) -> bool:
    """.dockerignore semantics for top-level names: the last matching pattern wins; '!' re-includes."""
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern[1:] if negate else pattern
        if fnmatch.fnmatch(path, body.rstrip("/")):
            ignored = not negate
    return ignored


def test_dockerignore_keeps_exactly_what_the_dockerfile_copies():
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    sources = []
    for instruction in instructions():
        if instruction.keyword == "COPY" and "--from=" not in instruction.arguments:
            parts = [p for p in instruction.arguments.split() if not p.startswith("--")]
            sources += parts[:-1]
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), source
        assert not _ignored(source, patterns), f"{source} is copied but .dockerignore drops it"
    for unwanted in (".venv", ".git", "tests", "bench", ".agentmesh", "deploy"):
        assert _ignored(unwanted, patterns), unwanted


def test_the_installed_wheel_compiles_an_example_contract(tmp_path):
    """What the image runs: the project wheel alone (not this checkout) checks an agent.yaml."""
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for name in ("agentmesh", "sidecar", "control_plane", "proto"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    env = {**os.environ, "PIP_NO_INDEX": "1"}  # the wheel's dependencies are this virtualenv's
    build = [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(source)]
    subprocess.run(build, check=True, timeout=300, env=env, cwd=tmp_path, capture_output=True)
    [wheel] = (tmp_path / "dist").glob("agentmesh-*.whl")
    target = tmp_path / "site"
    subprocess.run(
        [*pip, "install", "--no-deps", "--target", str(target), str(wheel)], check=True, timeout=300, env=env
    )
    installed = {**os.environ, "PYTHONPATH": str(target)}
    where = subprocess.run(
        [sys.executable, "-c", "import agentmesh; print(agentmesh.__file__)"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path, env=installed, check=True,
    )  # fmt: skip
    assert where.stdout.startswith(str(target)), "the wheel, not this checkout, must be imported"
    researcher = ROOT / "examples" / "agents" / "researcher" / "agent.yaml"
    check = subprocess.run(
        [sys.executable, "-m", "agentmesh.cli", "sidecar", "--check", "-c", str(researcher)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, env=installed, check=False,
    )  # fmt: skip
    assert check.returncode == 0, check.stderr
