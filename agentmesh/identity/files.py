"""Identity material on disk: `key.pem`, `cert-chain.pem` and `root-cert.pem` in one directory.

The names are Istio's, also what proxyless gRPC's `file_watcher` certificate
provider and Envoy read. The three files change together: each write goes
into a new hidden version directory, then one rename switches the `..data`
symlink to it, and the three names are symlinks through `..data` (the layout
of Kubernetes' atomic volume writer). A reader never sees a key from one
rotation with the certificate of another; `read_material` resolves `..data`
once for the same reason. The previous version is kept so a reader that
resolved the link just before a switch can finish; older ones are removed.

`key.pem` has mode 0600; a directory made here has mode 0700.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from agentmesh.identity.material import IdentityMaterial

KEY_FILE: Final = "key.pem"
CHAIN_FILE: Final = "cert-chain.pem"
ROOTS_FILE: Final = "root-cert.pem"
FILES: Final = (KEY_FILE, CHAIN_FILE, ROOTS_FILE)
DATA_LINK: Final = "..data"
_VERSION_PREFIX = "..v"


class MaterialFileError(Exception):
    """Identity files that exist but cannot be used; the message names the directory and the problem."""


def _write(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _relink(link: Path, target: str) -> None:
    """Points `link` at `target` with one rename (replacing a file or link of that name)."""
    temporary = link.with_name(f".{link.name}.{secrets.token_hex(4)}.tmp")
    os.symlink(target, temporary)
    try:
        os.replace(temporary, link)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        raise


def write_material(directory: str | Path, material: IdentityMaterial) -> None:
    """Writes the three files so they switch together; raises OSError when the directory is not writable."""
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
    version = root / f"{_VERSION_PREFIX}{stamp}.{material.generation}.{secrets.token_hex(3)}"
    version.mkdir(mode=0o755)
    try:
        _write(version / KEY_FILE, material.private_key_pem, 0o600)
        _write(version / CHAIN_FILE, material.certificate_chain_pem, 0o644)
        _write(version / ROOTS_FILE, material.trust_bundle_pem, 0o644)
        _fsync_directory(version)
    except BaseException:
        shutil.rmtree(version, ignore_errors=True)
        raise
    previous = _current_version(root)
    _relink(root / DATA_LINK, version.name)
    for name in FILES:
        link = root / name
        target = f"{DATA_LINK}/{name}"
        if not (link.is_symlink() and os.readlink(link) == target):
            _relink(link, target)
    _fsync_directory(root)
    keep = {version.name, previous}
    for old in root.glob(f"{_VERSION_PREFIX}*"):
        if old.name not in keep and old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)


def _current_version(root: Path) -> str | None:
    try:
        return os.readlink(root / DATA_LINK)
    except OSError:
        return None


def read_material(directory: str | Path) -> IdentityMaterial | None:
    """The material stored in `directory` (generation 0); None when there is none.

    Raises MaterialFileError when files are missing, unreadable or do not belong together. Plain files (written by
    another tool) are read as well as the versioned layout.
    """
    root = Path(directory)
    version = _current_version(root)
    base = root / version if version is not None else root
    paths = [base / name for name in FILES]
    if not any(path.exists() for path in paths):
        return None
    parts: list[bytes] = []
    for path in paths:
        try:
            parts.append(path.read_bytes())
        except OSError as exc:
            raise MaterialFileError(f"{root}: cannot read {path.name}: {exc.strerror or exc}") from None
    # Parsing needs `cryptography` (~9 MB): loaded only when there are files to parse.
    from agentmesh.identity.keys import MaterialError, material_from_pem

    try:
        return material_from_pem(parts[0], parts[1], parts[2])
    except MaterialError as exc:
        raise MaterialFileError(f"{root}: the identity files are not usable: {exc}") from None
