"""Generates the Python stubs in agentmesh/v1 from proto/agentmesh/v1.

    python -m agentmesh.codegen          # regenerate
    python -m agentmesh.codegen --check  # exit 1 if the stubs are stale

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

from agentmesh.protoc import PROJECT_PROTO_ROOT, run_protoc

PACKAGE_DIR = PROJECT_PROTO_ROOT.parent / "agentmesh" / "v1"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def _sources() -> list[str]:
    return sorted(str(p.relative_to(PROJECT_PROTO_ROOT)) for p in (PROJECT_PROTO_ROOT / "agentmesh" / "v1").glob("*.proto"))


def generate(out_root: Path) -> None:
    """Writes the stubs for every proto/agentmesh/v1/*.proto under out_root."""
    run_protoc(
        [
            f"--python_out={out_root}",
            f"--pyi_out={out_root}",
            f"--grpc_python_out={out_root}",
            *_sources(),
        ]
    )


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
        if args.check:
            if stale:
                print(f"stale generated stubs: {', '.join(stale)}; run `python -m agentmesh.codegen`", file=sys.stderr)
                return 1
            return 0
        for name in current.keys() - fresh.keys():
            current[name].unlink()
        for name, path in fresh.items():
            shutil.copyfile(path, PACKAGE_DIR / name)
        print(f"generated {len(fresh)} files in {PACKAGE_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
