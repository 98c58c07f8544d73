"""Compiles .proto files with grpcio-tools' bundled protoc.

Shared by the stub generator (`python -m agentmesh.codegen`) and the sidecar,
which compiles an agent's .proto files into a descriptor set at start-up.
Imports resolve against, in order: the caller's include paths, this project's
`proto/` tree (agentmesh/v1/options.proto), the well-known types shipped with
grpcio-tools, googleapis-common-protos (google/api/annotations.proto), and
protovalidate's `buf/validate/validate.proto`, which the installed protovalidate
wheel carries only as a serialized descriptor, so it is handed to protoc with
`--descriptor_set_in`.

protoc runs in this process by default. `isolated=True` runs it in a child
interpreter instead: a long-lived process (the sidecar, which compiles once at
start-up) then never maps protoc's library or keeps the heap it grew, about
8 MB of resident memory for the whole life of the process.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from google.protobuf import descriptor_pb2

PROJECT_PROTO_ROOT = Path(__file__).resolve().parent.parent / "proto"
# The folder holding the `agentmesh` package: its agentmesh/v1/*.proto copies
# resolve imports of "agentmesh/v1/..." wherever the package is installed.
PACKAGE_ROOT = Path(__file__).resolve().parent.parent
# A child protoc (isolated=True) compiling an agent's contract takes well under a second.
PROTOC_TIMEOUT_S = 120.0


class ProtoCompileError(Exception):
    """protoc refused the input; the message holds protoc's own diagnostics."""


def _grpc_tools_include() -> Path:
    return Path(str(resources.files("grpc_tools") / "_proto"))


def _googleapis_include() -> Path:
    # googleapis-common-protos installs google/api/*.proto next to its modules.
    import google.api

    return Path(next(iter(google.api.__path__))).parent.parent


def _validate_descriptor_set() -> bytes:
    from protovalidate._gen.buf.validate import validate_pb

    fds = descriptor_pb2.FileDescriptorSet()
    fds.file.add().MergeFromString(validate_pb._DESC.proto.to_binary())
    return fds.SerializeToString()


def include_paths(extra: Sequence[Path] = ()) -> list[Path]:
    """The import path protoc searches, most specific first."""
    paths = [*extra]
    # In a checkout the sources in proto/ win; installed, the packaged copies answer.
    paths.append(PROJECT_PROTO_ROOT if PROJECT_PROTO_ROOT.is_dir() else PACKAGE_ROOT)
    paths += [_grpc_tools_include(), _googleapis_include()]
    return paths


def run_protoc(args: Sequence[str], *, includes: Sequence[Path] = (), isolated: bool = False) -> None:
    """Runs protoc with the standard include path; raises ProtoCompileError.

    `isolated` runs it in a child interpreter (see the module docstring).
    """
    with tempfile.TemporaryDirectory(prefix="agentmesh-protoc-") as tmp:
        validate_set = Path(tmp, "buf_validate.binpb")
        validate_set.write_bytes(_validate_descriptor_set())
        argv = ["protoc", *(f"-I{p}" for p in include_paths(includes))]
        argv += [f"--descriptor_set_in={validate_set}", *args]
        if isolated:
            _protoc_in_child(argv)
        else:
            _protoc_here(argv, Path(tmp))


def _protoc_in_child(argv: Sequence[str]) -> None:
    import subprocess
    import sys

    try:
        done = subprocess.run(
            [sys.executable, "-m", "grpc_tools.protoc", *argv[1:]], capture_output=True, timeout=PROTOC_TIMEOUT_S
        )
    except subprocess.TimeoutExpired as exc:
        raise ProtoCompileError(f"protoc did not finish within {PROTOC_TIMEOUT_S:.0f} s") from exc
    if done.returncode != 0:
        detail = done.stderr.decode(errors="replace").strip()
        raise ProtoCompileError(detail or f"protoc exited with {done.returncode}")


def _protoc_here(argv: Sequence[str], tmp: Path) -> None:
    import contextlib
    import io
    import os
    import sys

    from grpc_tools import protoc

    # protoc writes diagnostics to fd 2; capture them for a readable error.
    err_path = Path(tmp, "stderr")
    saved = os.dup(2)
    with open(err_path, "w+b") as err, contextlib.redirect_stderr(io.StringIO()):
        sys.stderr.flush()
        os.dup2(err.fileno(), 2)
        try:
            code = protoc.main(argv)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
    if code != 0:
        detail = err_path.read_text(errors="replace").strip()
        raise ProtoCompileError(detail or f"protoc exited with {code}")


def compile_descriptor_set(
    files: Sequence[Path], *, includes: Sequence[Path] = (), isolated: bool = False
) -> descriptor_pb2.FileDescriptorSet:
    """Compiles `files` (with every import) into one FileDescriptorSet.

    Each file is named relative to the first include path that contains it,
    so imports between the agent's own files resolve as they do in `buf`.
    `isolated` runs protoc in a child interpreter (see the module docstring).
    """
    roots = [p.resolve() for p in includes] or sorted({f.resolve().parent for f in files})
    relative = _relative_names(files, roots)
    with tempfile.TemporaryDirectory(prefix="agentmesh-fds-") as tmp:
        out = Path(tmp, "out.binpb")
        run_protoc(
            ["--include_imports", "--include_source_info", f"--descriptor_set_out={out}", *relative],
            includes=roots,
            isolated=isolated,
        )
        fds = descriptor_pb2.FileDescriptorSet()
        fds.ParseFromString(out.read_bytes())
    return fds


def _relative_names(files: Sequence[Path], roots: Sequence[Path]) -> list[str]:
    names = []
    for file in files:
        resolved = file.resolve()
        root = next((r for r in roots if resolved.is_relative_to(r)), None)
        if root is None:
            raise ProtoCompileError(f"{file}: not under any include path {[str(r) for r in roots]}")
        names.append(str(resolved.relative_to(root)))
    return names


def generate_python_stubs(files: Sequence[Path], out_dir: Path, *, includes: Sequence[Path] = ()) -> list[str]:
    """Writes *_pb2.py, *_pb2.pyi and *_pb2_grpc.py for `files` into `out_dir`.

    Imported files whose Python module cannot be imported here are generated
    too — notably buf/validate/validate.proto, which protovalidate 2.x no
    longer ships as a google.protobuf module — so the stubs import cleanly.
    Returns the .proto names generated.
    """
    import importlib.util

    roots = [p.resolve() for p in includes] or sorted({f.resolve().parent for f in files})
    requested = _relative_names(files, roots)
    fds = compile_descriptor_set(files, includes=includes)

    def importable(name: str) -> bool:
        module = name.removesuffix(".proto").replace("/", ".").replace("-", "_") + "_pb2"
        try:
            return importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            return False

    missing = [f.name for f in fds.file if f.name not in requested and not importable(f.name)]
    out_dir.mkdir(parents=True, exist_ok=True)
    outputs = [f"--python_out={out_dir}", f"--pyi_out={out_dir}"]
    run_protoc([*outputs, f"--grpc_python_out={out_dir}", *requested], includes=roots)
    if missing:
        run_protoc([*outputs, *missing], includes=roots)
    return [*requested, *missing]
