"""How CLI commands print: `-o table|json|yaml`, aligned tables, ages, and errors with exit codes.

Tables are for people (kubectl style: upper-case headers, columns three
spaces apart, `<none>` for empty cells); json and yaml are for scripts and
carry every field. Errors go to stderr as `error: ...` lines and end the
command with its documented exit code.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

import click
import yaml
from google.protobuf import json_format, timestamp_pb2
from google.protobuf.message import Message

FORMATS: Final = ("table", "json", "yaml")
NONE: Final = "<none>"
COLUMN_GAP: Final = "   "

# Exit codes shared by every command that talks to the control plane.
EXIT_FAILED: Final = 1
EXIT_INVALID: Final = 2
EXIT_UNREACHABLE: Final = 3

_F = TypeVar("_F", bound=Callable[..., Any])


def output_option(function: _F) -> _F:
    """Adds `-o/--output table|json|yaml`, passed as `output`."""
    return click.option(
        "-o",
        "--output",
        type=click.Choice(FORMATS),
        default="table",
        show_default=True,
        help="table for people; json or yaml with every field, for scripts.",
    )(function)


class CliError(click.ClickException):
    """Ends a command: prints each line of the message as `error: ...` on stderr and exits with `exit_code`."""

    exit_code = EXIT_FAILED

    def show(self, file: Any = None) -> None:
        for line in self.message.splitlines() or [""]:
            click.echo(f"error: {line}", err=True)


class InvalidInputError(CliError):
    """The input was refused as invalid (policy errors, unreadable files): exit code 2."""

    exit_code = EXIT_INVALID


class UnreachableError(CliError):
    """The control plane could not be reached: exit code 3."""

    exit_code = EXIT_UNREACHABLE


def warn(message: str) -> None:
    click.echo(f"warning: {message}", err=True)


def note(message: str) -> None:
    """A remark for people that is not the command's output (e.g. 'No policies found.'): stderr."""
    click.echo(message, err=True)


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], *, indent: str = "") -> str:
    """Rows aligned under upper-case headers; the last column is not padded."""
    cells = [[str(h).upper() for h in headers]]
    cells += [[NONE if value is None or value == "" else str(value) for value in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        padded = [value.ljust(width) for value, width in zip(row[:-1], widths[:-1], strict=True)]
        lines.append(indent + COLUMN_GAP.join([*padded, row[-1]]).rstrip())
    return "\n".join(lines)


def emit(output: str, data: Any, human: Callable[[], str]) -> None:
    """Prints `data` as json or yaml, or the text `human()` builds for the table format."""
    if output == "json":
        click.echo(json.dumps(data, indent=2))
    elif output == "yaml":
        click.echo(yaml.safe_dump(data, sort_keys=False, default_flow_style=False), nl=False)
    else:
        click.echo(human())


def emit_secret(output: str, created: Message, secret: str, summary: str) -> None:
    """Prints what was just created with a secret that is shown only this once.

    With -o table the secret alone goes to stdout (so it can be captured) and
    `summary` to stderr; json and yaml print every field, the secret among them.
    """
    if output != "table":
        emit(output, message_data(created), lambda: "")
        return
    note(summary)
    click.echo(secret)


def message_data(message: Message) -> dict[str, Any]:
    """A protobuf message as json/yaml-ready data: proto field names, every field shown, times as RFC 3339."""
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def when(stamp: timestamp_pb2.Timestamp) -> datetime | None:
    """A Timestamp as an aware datetime; None when unset."""
    if not stamp.seconds and not stamp.nanos:
        return None
    return stamp.ToDatetime(tzinfo=UTC)


def age(moment: datetime | None, *, now: datetime | None = None) -> str:
    """How long ago, the way kubectl shows it: 45s, 12m, 3h, 2d."""
    if moment is None:
        return NONE
    seconds = max(0, int(((now or datetime.now(UTC)) - moment).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def utc_time(moment: datetime | None) -> str:
    """A moment in UTC, to the second: '2026-01-01 12:00:00Z'."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ") if moment is not None else NONE
