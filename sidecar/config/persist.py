"""The last good xDS config on disk, so a sidecar can start when the control plane cannot be reached.

After every accepted update the ADS client calls `save(path, snapshot, agent=...)`:
the resources exactly as received (per type URL: the accepted version_info
and the packed `google.protobuf.Any` of every resource) go to a JSON file,
written to a temporary file in the same directory, flushed to disk and
renamed over the old one, so a crash leaves either the old or the new copy.

`load(path, agent=...)` decodes that file with the same decoders as a live
update and returns the MeshSnapshot, or None when there is no file. A file
that cannot be used (not JSON, another format, written for another agent,
resources that no longer decode) is logged as a warning and ignored: the
sidecar then starts without xDS config rather than with a config it cannot
trust.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import any_pb2
from google.protobuf.message import DecodeError as ProtoDecodeError

from sidecar.config.decode import TYPE_URLS, Decoded, DecodeError, assemble, decode_all
from sidecar.config.snapshot import MeshSnapshot

log = logging.getLogger("agentmesh.sidecar.xds")

FORMAT = "agentmesh.sidecar.xds-config/v1"


class PersistError(ValueError):
    """The file exists but cannot be used; the message says why."""


@dataclass(frozen=True)
class SavedConfig:
    """A config read back from disk and when it was saved (wall-clock seconds)."""

    snapshot: MeshSnapshot
    written_at: float


def save(path: Path, snapshot: MeshSnapshot, *, agent: str, clock: Callable[[], float] = time.time) -> None:
    """Writes `snapshot`'s raw resources and versions to `path` atomically; raises OSError on I/O failure."""
    types: dict[str, Any] = {}
    for type_url in TYPE_URLS:
        resources = snapshot.raw.get(type_url)
        if resources is None:
            continue
        types[type_url] = {
            "version": snapshot.versions.get(type_url, ""),
            "resources": [
                base64.b64encode(packed.SerializeToString(deterministic=True)).decode("ascii")
                for packed in resources.values()
                if isinstance(packed, any_pb2.Any)
            ],
        }
    body = json.dumps({"format": FORMAT, "agent": agent, "written_at": clock(), "types": types}, indent=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(body)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def load(path: Path, *, agent: str) -> MeshSnapshot | None:
    """The snapshot saved at `path` for `agent`; None when the file is missing or unusable (warning logged)."""
    saved = read(path, agent=agent)
    return saved.snapshot if saved is not None else None


def read(path: Path, *, agent: str) -> SavedConfig | None:
    """Like `load`, with the time the config was saved."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        log.warning("ignoring the saved xDS config %s: cannot read it: %s", path, exc)
        return None
    try:
        return _parse(text, agent=agent)
    except (PersistError, DecodeError) as exc:
        log.warning("ignoring the saved xDS config %s: %s", path, exc)
        return None


def _parse(text: str, *, agent: str) -> SavedConfig:
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PersistError(f"not JSON: {exc}") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise PersistError(f"not a {FORMAT} file")
    if document.get("agent") != agent:
        raise PersistError(f"written for agent {document.get('agent')!r}, not {agent!r}")
    types = document.get("types")
    if not isinstance(types, dict):
        raise PersistError("no 'types' object")
    resources: dict[str, dict[str, Decoded]] = {}
    versions: dict[str, str] = {}
    for type_url, entry in types.items():
        if type_url not in TYPE_URLS:
            raise PersistError(f"unknown resource type {type_url!r}")
        if not isinstance(entry, dict) or not isinstance(entry.get("resources"), list):
            raise PersistError(f"{type_url}: expected an object with a 'resources' list")
        packed = [_unpack(item, type_url) for item in entry["resources"]]
        resources[type_url] = decode_all(type_url, packed, agent=agent)
        versions[type_url] = str(entry.get("version", ""))
    written_at = document.get("written_at")
    return SavedConfig(assemble(resources, versions), float(written_at) if isinstance(written_at, int | float) else 0.0)


def _unpack(item: object, type_url: str) -> any_pb2.Any:
    if not isinstance(item, str):
        raise PersistError(f"{type_url}: a resource is not a base64 string")
    packed = any_pb2.Any()
    try:
        packed.ParseFromString(base64.b64decode(item, validate=True))
    except (binascii.Error, ProtoDecodeError) as exc:
        raise PersistError(f"{type_url}: a resource is corrupt: {exc}") from None
    return packed
