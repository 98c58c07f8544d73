"""A real admin API in a background thread (its own event loop), and a runner for `agentmesh` commands.

The CLI is synchronous, so the server cannot share the test's loop: it runs
on a loop in a daemon thread; the registry and ACK tracker live on that loop,
so tests change them through `BackgroundAdmin.call`.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import pytest
from click.testing import CliRunner, Result

from agentmesh.cli.main import cli
from tests.unit.control_plane.api.harness import TOKEN, AdminHarness, populate, start_admin

_T = TypeVar("_T")


class _Harness(Protocol):
    @property
    def address(self) -> str: ...

    async def stop(self) -> None: ...


_H = TypeVar("_H", bound=_Harness)


class Background(Generic[_H]):
    """An admin API harness (its server started by `start`) served from a loop in another thread."""

    def __init__(self, start: Coroutine[Any, Any, _H], *, name: str = "admin-api") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()
        self.harness: _H = self.run(start)

    @property
    def address(self) -> str:
        return self.harness.address

    def run(self, coroutine: Coroutine[Any, Any, _T]) -> _T:
        """Runs a coroutine on the server's loop and waits for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=20)

    def call(self, function: Callable[[], _T]) -> _T:
        """Calls a plain function on the server's loop thread (where the registry lives)."""

        async def invoke() -> _T:
            return function()

        return self.run(invoke())

    def close(self) -> None:
        self.run(self.harness.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=20)
        self.loop.close()


# AdminService (and ADS) served from a loop in another thread.
BackgroundAdmin = Background[AdminHarness]


@pytest.fixture
def admin(tmp_path: Path) -> Iterator[BackgroundAdmin]:
    background = Background(start_admin(tmp_path / "cp.db"))
    background.call(lambda: populate(background.harness.registry))
    yield background
    background.close()


Run = Callable[..., Result]


def invoke(
    address: str, *args: str, token: str = TOKEN, input: str | None = None, env: dict[str, str] | None = None
) -> Result:
    """Invokes `agentmesh ARGS` with the control plane at `address` and `token` in the environment."""
    environment = {"AGENTMESH_CONTROL_PLANE": address, "AGENTMESH_TOKEN": token, **(env or {})}
    return CliRunner().invoke(cli, list(args), input=input, env=environment, catch_exceptions=False)


@pytest.fixture
def run(admin: BackgroundAdmin) -> Run:
    """`run("policy", "get")`: invokes `agentmesh` with the control plane and token in the environment."""
    return functools.partial(invoke, admin.address)
