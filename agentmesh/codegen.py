"""Generates the Python stubs in agentmesh/v1 from proto/agentmesh/v1, and the
committed descriptor sets of the example agents.

    python -m agentmesh.codegen          # regenerate
    python -m agentmesh.codegen --check  # exit 1 if anything generated is stale

Every `examples/agents/*/<name>.binpb` is the compiled form of its sibling
`<name>.proto` (imports included, source info left out so the bytes depend
only on the .proto files): agents that cannot import protoc-generated modules
build their message classes from it. To add one, write the .proto, create an
empty `<name>.binpb` beside it and run the generator.

The check runs in the test suite, so a .proto edited without regenerating
fails CI.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

from agentmesh.protoc import PROJECT_PROTO_ROOT, ProtoCompileError, compile_descriptor_set, run_protoc

PACKAGE_DIR = PROJECT_PROTO_ROOT.parent / "agentmesh" / "v1"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", ".proto")
EXAMPLE_AGENTS_DIR = PROJECT_PROTO_ROOT.parent / "examples" / "agents"


def _sources() -> list[str]:
    return sorted(
        str(p.relative_to(PROJECT_PROTO_ROOT)) for p in (PROJECT_PROTO_ROOT / "agentmesh" / "v1").glob("*.proto")
    )


def generate(out_root: Path) -> None:
    """Writes the stubs for every proto/agentmesh/v1/*.proto under out_root, and a copy of each .proto.

    The copies ship inside the package, so an installed agentmesh (a wheel, the
    container image) can still compile agent contracts that import
    "agentmesh/v1/options.proto".
    """
    run_protoc(
        [
            f"--python_out={out_root}",
            f"--pyi_out={out_root}",
            f"--grpc_python_out={out_root}",
            *_sources(),
        ]
    )
    for source in _sources():
        shutil.copyfile(PROJECT_PROTO_ROOT / source, out_root / source)


def descriptor_set_bytes(proto: Path) -> bytes:
    """The committed descriptor set of one .proto: imports included, no source info, stable bytes."""
    if not proto.is_file():
        raise ProtoCompileError(f"{proto}: not found; each descriptor set is generated from its sibling .proto")
    fds = compile_descriptor_set([proto])
    for file in fds.file:
        file.ClearField("source_code_info")
    return fds.SerializeToString(deterministic=True)


def descriptor_set_targets(root: Path | None = None) -> list[tuple[Path, Path]]:
    """(source .proto, descriptor set) for every `<root>/*/*.binpb`; root defaults to examples/agents."""
    root = EXAMPLE_AGENTS_DIR if root is None else root
    return [(binpb.with_suffix(".proto"), binpb) for binpb in sorted(root.glob("*/*.binpb"))]


def _display(path: Path) -> str:
    root = PROJECT_PROTO_ROOT.parent
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def _generated_files(root: Path) -> dict[str, Path]:
    return {p.name: p for p in root.iterdir() if p.name.endswith(GENERATED_SUFFIXES)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="fail if the committed stubs differ from the .proto files")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        fresh = _generated_files(Path(tmp) / "agentmesh" / "v1")
        current = _generated_files(PACKAGE_DIR)
        stale = sorted(
            name
            for name in fresh.keys() | current.keys()
            if name not in fresh or name not in current or not filecmp.cmp(fresh[name], current[name], shallow=False)
        )
        sets = {binpb: descriptor_set_bytes(proto) for proto, binpb in descriptor_set_targets()}
        stale_sets = sorted(_display(binpb) for binpb, data in sets.items() if binpb.read_bytes() != data)
        if args.check:
            if stale:
                print(f"stale generated stubs: {', '.join(stale)}; run `python -m agentmesh.codegen`", file=sys.stderr)
            if stale_sets:
                print(
                    f"stale descriptor sets: {', '.join(stale_sets)}; run `python -m agentmesh.codegen`",
                    file=sys.stderr,
                )
            return 1 if stale or stale_sets else 0
        for binpb, data in sets.items():
            binpb.write_bytes(data)
        for name in current.keys() - fresh.keys():
            current[name].unlink()
        for name, path in fresh.items():
            shutil.copyfile(path, PACKAGE_DIR / name)
        print(f"generated {len(fresh)} files in {PACKAGE_DIR} and {len(sets)} descriptor sets")
    return 0


if __name__ == "__main__":
    sys.exit(main())
