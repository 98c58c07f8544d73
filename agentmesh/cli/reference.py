"""Writes docs/cli-reference.md from the commands' own `--help`, so the two never disagree.

python -m agentmesh.cli.reference          # regenerate
python -m agentmesh.cli.reference --check  # exit 1 when the committed file is stale
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

import click

from agentmesh.cli.main import cli

REFERENCE = Path(__file__).resolve().parents[2] / "docs" / "cli-reference.md"
_WIDTH = 100


def _commands(command: click.Command, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    yield path, command
    if isinstance(command, click.Group):
        # list_commands/get_command rather than `.commands`: the top-level group loads its commands lazily.
        with click.Context(command, info_name=" ".join(path)) as ctx:
            subcommands = [(name, command.get_command(ctx, name)) for name in command.list_commands(ctx)]
        for name, subcommand in subcommands:
            if subcommand is not None:
                yield from _commands(subcommand, (*path, name))


def render() -> str:
    """The whole reference: one section per command, its help as `agentmesh ... --help` prints it."""
    lines = [
        "# `agentmesh` command reference",
        "",
        "Generated from `--help` by `python -m agentmesh.cli.reference`.",
        "",
    ]
    for path, command in _commands(cli, ("agentmesh",)):
        with click.Context(command, info_name=" ".join(path), terminal_width=_WIDTH, max_content_width=_WIDTH) as ctx:
            text = command.get_help(ctx)
        lines += [f"## {' '.join(path)}", "", "```", text.rstrip(), "```", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="fail if docs/cli-reference.md is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not REFERENCE.is_file() or REFERENCE.read_text() != text:
            print("docs/cli-reference.md is stale; run `python -m agentmesh.cli.reference`", file=sys.stderr)
            return 1
        return 0
    REFERENCE.write_text(text)
    print(f"wrote {REFERENCE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
