"""The files `agentmesh up` keeps in its state folder (`.agentmesh/` in the working directory).

.agentmesh/
  control-plane.db     the embedded control plane's policy store and registry journal (SQLite)
  token                the admin token of this run (mode 0600): AGENTMESH_TOKEN=$(cat .agentmesh/token)
  status.json          the running mesh: processes, PIDs, addresses, figures (rewritten while up runs)
  replicas/            one generated agent.yaml per replica, its last good xDS config and its identity
  identity/cli/        the operator's client identity (key, certificate, roots) for `agentmesh call`
  logs/                one log per process, plus up's own (control plane included)
  prometheus.yml       the generated Prometheus config, when Prometheus runs
  prometheus/          Prometheus' storage
"""

from __future__ import annotations

import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

DEFAULT_STATE_DIR = Path(".agentmesh")
# Where `agentmesh call` looks for the client identity of the `agentmesh up` running in this folder.
CLIENT_IDENTITY_DIR = DEFAULT_STATE_DIR / "identity" / "cli"
TOKEN_BYTES = 24


@dataclass(frozen=True)
class StateDir:
    """Where each file of a local mesh lives."""

    root: Path
    logs: Path

    @classmethod
    def at(cls, root: Path, *, logs: Path | None = None) -> StateDir:
        return cls(root=root, logs=logs if logs is not None else root / "logs")

    @property
    def db(self) -> Path:
        return self.root / "control-plane.db"

    @property
    def token(self) -> Path:
        return self.root / "token"

    @property
    def status(self) -> Path:
        return self.root / "status.json"

    @property
    def replicas(self) -> Path:
        return self.root / "replicas"

    @property
    def client_identity(self) -> Path:
        return self.root / "identity" / "cli"

    @property
    def prometheus_config(self) -> Path:
        return self.root / "prometheus.yml"

    @property
    def prometheus_data(self) -> Path:
        return self.root / "prometheus"

    def prepare(self) -> None:
        """Creates the state and log folders."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)

    def reset_replicas(self) -> None:
        """Empties the replicas folder: configs of an earlier run name stale ports."""
        shutil.rmtree(self.replicas, ignore_errors=True)
        self.replicas.mkdir(parents=True)

    def save_token(self, token: str) -> None:
        """Writes this run's admin token, readable by the owner only."""
        write_private(self.token, token + "\n")


def new_token() -> str:
    """A fresh admin token: 192 random bits, URL-safe."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def write_private(path: Path, text: str) -> None:
    """Writes `text` to `path` with mode 0600, whatever mode an earlier file had."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        os.fchmod(handle.fileno(), 0o600)
        handle.write(text)


def write_atomically(path: Path, text: str) -> None:
    """Replaces `path` in one step, so a reader never sees half a file."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)
