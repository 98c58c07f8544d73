"""A real Arize Phoenix server as the OTLP trace backend of integration tests.

Phoenix pins many packages that conflict with the project's own, so it lives in
a separate virtualenv, `.venv-phoenix` at the repository root, created on first
use under a file lock (parallel test processes wait for one install). A marker
file inside it records the installed version, so a half-finished install is
retried and a changed pin reinstalls.

`running_phoenix()` starts `phoenix serve` on free loopback ports with a
throw-away SQLite database, telemetry and outside resources off, and stops it
afterwards. `PhoenixServer` reads spans back only through Phoenix's REST API
(`GET /v1/projects/{project}/spans`), so a test sees what the backend stored.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.integration.procs import ROOT, Process, free_port, http_ok, wait_for

PHOENIX_VERSION = "20.26.1"
VENV = ROOT / ".venv-phoenix"
DEFAULT_INSTALL_TIMEOUT = 600.0
DEFAULT_START_TIMEOUT = 120.0
DEFAULT_QUERY_TIMEOUT = 10.0
_LOCK = VENV / ".install.lock"
_MARKER = VENV / ".installed"
# pip's own words when it could not talk to the package index at all.
_UNREACHABLE = re.compile(
    r"NewConnectionError|ConnectTimeoutError|Failed to establish a new connection|"
    r"Temporary failure in name resolution|Name or service not known|Network is unreachable|"
    r"ProxyError|Read timed out|ConnectionResetError",
)
# Environment that must not leak from the test process into Phoenix.
_DROPPED_ENV_PREFIXES = ("OTEL_", "PHOENIX_")
_DROPPED_ENV = ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")


class RegistryUnreachable(RuntimeError):
    """Phoenix is not installed and the package index cannot be reached to install it."""


class PhoenixInstallError(RuntimeError):
    """Installing Phoenix failed for a reason other than an unreachable package index."""


def ensure_installed(*, timeout: float = DEFAULT_INSTALL_TIMEOUT) -> Path:
    """The `phoenix` executable of `.venv-phoenix`, installing Phoenix there first if needed."""
    executable = VENV / "bin" / "phoenix"
    if _installed_version() == PHOENIX_VERSION:
        return executable
    VENV.mkdir(exist_ok=True)
    deadline = time.monotonic() + timeout
    with _LOCK.open("a") as lock:
        _acquire(lock.fileno(), deadline)
        try:
            if _installed_version() != PHOENIX_VERSION:  # another process may have finished meanwhile
                _install(deadline)
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
    return executable


def _installed_version() -> str:
    try:
        return _MARKER.read_text().strip()
    except FileNotFoundError:
        return ""


def _acquire(fd: int, deadline: float) -> None:
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise PhoenixInstallError(
                    f"timed out waiting for another process installing Phoenix ({_LOCK})"
                ) from None
            time.sleep(0.5)


def _install(deadline: float) -> None:
    _MARKER.unlink(missing_ok=True)
    # Short network timeouts so an unreachable index fails in seconds, not after pip's long retries.
    pip = [str(VENV / "bin" / "pip"), "install", "--quiet", "--retries", "2", "--timeout", "30"]
    steps = [[sys.executable, "-m", "venv", str(VENV)], [*pip, f"arize-phoenix=={PHOENIX_VERSION}"]]
    for argv in steps:
        remaining = deadline - time.monotonic()
        try:
            done = subprocess.run(
                argv, capture_output=True, text=True, timeout=max(remaining, 1), cwd=ROOT, env=_clean_env()
            )
        except subprocess.TimeoutExpired as exc:
            raise PhoenixInstallError(f"`{' '.join(argv)}` did not finish within {remaining:.0f}s") from exc
        if done.returncode != 0:
            output = (done.stdout + done.stderr)[-4000:]
            if argv[0] != sys.executable and (reason := _UNREACHABLE.search(output)):
                last = output.strip().splitlines()[-1]
                raise RegistryUnreachable(f"pip could not reach the package index ({reason[0]}): {last}")
            raise PhoenixInstallError(f"`{' '.join(argv)}` exited with {done.returncode}:\n{output}")
    _MARKER.write_text(PHOENIX_VERSION + "\n")


def _clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in _DROPPED_ENV and not key.startswith(_DROPPED_ENV_PREFIXES)
    }
    return {**env, **(extra or {})}


@dataclass(frozen=True)
class PhoenixServer:
    """A running Phoenix: where to send OTLP and how to read spans back."""

    process: Process
    port: int
    grpc_port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def otlp_http_endpoint(self) -> str:
        """The OTLP/HTTP base endpoint (exporters append /v1/traces)."""
        return self.url

    @property
    def otlp_grpc_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.grpc_port}"

    def spans(
        self,
        project: str,
        *,
        name: str | None = None,
        status_code: str | None = None,
        trace_id: str | None = None,
        parent_id: str | None = None,
        attributes: Mapping[str, str] | None = None,
        limit: int = 1000,
    ) -> list[dict[str, Any]]:
        """Spans of `project` matching every filter, newest first; [] while the project does not exist yet.

        Uses `GET /v1/projects/{project}/spans`: `attributes` are `key:value` filters on
        span attributes (dot-separated keys), `status_code` is OK, ERROR or UNSET,
        `parent_id="null"` selects root spans.
        """
        query: list[tuple[str, str]] = [("limit", str(limit))]
        for key, value in (("name", name), ("status_code", status_code), ("trace_id", trace_id)):
            if value is not None:
                query.append((key, value))
        if parent_id is not None:
            query.append(("parent_id", parent_id))
        query += [("attribute", f"{key}:{json.dumps(value)}") for key, value in (attributes or {}).items()]
        path = f"/v1/projects/{urllib.parse.quote(project, safe='')}/spans?{urllib.parse.urlencode(query)}"
        try:
            body = self._get(path)
        except urllib.error.HTTPError as error:
            with error:
                if error.code == 404:
                    return []
                raise AssertionError(f"Phoenix answered {error.code} to {path}: {error.read()!r}") from None
        data = json.loads(body)["data"]
        assert isinstance(data, list)
        return data

    def version(self) -> str:
        return self._get("/arize_phoenix_version").decode().strip()

    def _get(self, path: str) -> bytes:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(self.url + path, timeout=DEFAULT_QUERY_TIMEOUT) as response:
            body: bytes = response.read()
            return body


@contextlib.contextmanager
def running_phoenix(log_dir: Path, *, timeout: float = DEFAULT_START_TIMEOUT) -> Iterator[PhoenixServer]:
    """Runs `phoenix serve` on free loopback ports with its own SQLite database under `log_dir`."""
    executable = ensure_installed()
    work = log_dir / "phoenix"
    work.mkdir(exist_ok=True)
    port, grpc_port = free_port(), free_port()
    env = _clean_env(
        {
            "PHOENIX_HOST": "127.0.0.1",
            "PHOENIX_PORT": str(port),
            # Phoenix binds its OTLP gRPC receiver on all interfaces; tests only send to loopback.
            "PHOENIX_GRPC_PORT": str(grpc_port),
            "PHOENIX_WORKING_DIR": str(work),
            "PHOENIX_SQL_DATABASE_URL": f"sqlite:///{work / 'phoenix.db'}",
            "PHOENIX_TELEMETRY_ENABLED": "false",
            "PHOENIX_ALLOW_EXTERNAL_RESOURCES": "false",
            "PHOENIX_DISABLE_AGENT_ASSISTANT": "true",
            "PHOENIX_AGENTS_DISABLE_BASH": "true",
            "PHOENIX_ENABLE_MCP_SERVER": "false",
            "PHOENIX_LOG_MIGRATIONS": "false",
        }
    )
    process = _start(executable, work, env)
    try:
        wait_for(lambda: http_ok(f"http://127.0.0.1:{port}/healthz"), what="Phoenix", timeout=timeout, process=process)
        yield PhoenixServer(process, port, grpc_port)
    finally:
        process.stop()


def _start(executable: Path, work: Path, env: dict[str, str]) -> Process:
    log = work / "phoenix.log"
    with log.open("wb") as handle:  # the child keeps its own descriptor
        popen = subprocess.Popen([str(executable), "serve"], stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=work)
    return Process("phoenix", popen, log)


__all__ = [
    "PHOENIX_VERSION",
    "PhoenixInstallError",
    "PhoenixServer",
    "RegistryUnreachable",
    "ensure_installed",
    "running_phoenix",
]
