"""Fixtures shared by unit tests."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from agentmesh.telemetry import ACCESS_LOGGER


@pytest.fixture
def logging_state() -> Iterator[None]:
    """Puts the root and access loggers back as they were: `configure_logging` installs process-wide handlers."""
    root = logging.getLogger()
    access = logging.getLogger(ACCESS_LOGGER)
    saved = (list(root.handlers), root.level, access.level, access.disabled)
    yield
    for handler in [h for h in root.handlers if h not in saved[0]]:
        root.removeHandler(handler)
        handler.close()
    root.setLevel(saved[1])
    access.setLevel(saved[2])
    access.disabled = saved[3]
