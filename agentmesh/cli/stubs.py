"""`agentmesh stubs`: generate Python client stubs for an agent's contract."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from agentmesh.protoc import ProtoCompileError, generate_python_stubs


@click.command()
@click.argument("protos", nargs=-1, required=True, type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option(
    "-o",
    "--out",
    "out_dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("."),
    show_default=True,
    help="Where the generated modules go.",
)
@click.option(
    "-I",
    "--include",
    "includes",
    multiple=True,
    type=click.Path(path_type=Path, file_okay=False),
    help="Import path for the .proto files (repeatable); default: each file's folder.",
)
def stubs(protos: tuple[Path, ...], out_dir: Path, includes: tuple[Path, ...]) -> None:
    """Generate Python gRPC stubs (with type stubs) for the given .proto files.

    Like `python -m grpc_tools.protoc`, with the imports an agent contract
    uses already on the path (buf/validate, google/api, agentmesh/v1), and the
    modules for imports that are not installed generated alongside.

    Example: agentmesh stubs -o client/ examples/agents/researcher/researcher.proto
    """
    try:
        generated = generate_python_stubs(protos, out_dir, includes=includes)
    except ProtoCompileError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    for name in generated:
        click.echo(f"generated {out_dir / name.removesuffix('.proto')}_pb2.py")
