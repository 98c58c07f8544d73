"""Fixtures shared by the integration tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.controlplane import ControlPlaneProcess


@pytest.fixture
def control_plane(tmp_path: Path) -> Iterator[ControlPlaneProcess]:
    """A control plane process over a fresh SQLite file."""
    process = ControlPlaneProcess(tmp_path, tmp_path / "cp.db")
    yield process
    process.process.stop()
