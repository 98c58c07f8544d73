"""Loads YAML documents into pydantic models with precise error locations.

Every user-facing YAML file (agent.yaml, mesh files, policies) goes through
here, so an error always names the file, the line and the field path:

    agent.yaml:7: upstream.protocol: Input should be 'http' or 'grpc'
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pydantic
import yaml

Model = TypeVar("Model", bound=pydantic.BaseModel)


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in one document: where, which field, and why."""

    source: str
    line: int | None
    path: str
    reason: str

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}" if self.line else self.source
        return f"{where}: {self.path}: {self.reason}" if self.path else f"{where}: {self.reason}"


class ConfigError(ValueError):
    """A document was rejected; `issues` lists every problem found."""

    def __init__(self, issues: list[ConfigIssue]) -> None:
        self.issues = issues
        super().__init__("\n".join(str(i) for i in issues))


def _positions(node: yaml.Node, prefix: tuple[str | int, ...], out: dict[tuple[str | int, ...], int]) -> None:
    out[prefix] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            # The key's own line is where a reader looks for a bad value.
            name = key.value
            out[(*prefix, name)] = key.start_mark.line + 1
            _positions(value, (*prefix, name), out)
            out[(*prefix, name)] = key.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _positions(item, (*prefix, index), out)


def _dotted(path: tuple[str | int, ...]) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def iter_documents(text: str, source: str) -> Iterator[tuple[Any, dict[tuple[str | int, ...], int]]]:
    """Yields (data, positions) per YAML document; raises ConfigError on syntax errors."""
    try:
        nodes = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
        datas = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        reason = str(getattr(exc, "problem", None) or exc)
        raise ConfigError([ConfigIssue(source, line, "", f"invalid YAML: {reason}")]) from exc
    for node, data in zip(nodes, datas, strict=True):
        if node is None:
            continue
        positions: dict[tuple[str | int, ...], int] = {}
        _positions(node, (), positions)
        yield data, positions


def issues_from_validation(
    exc: pydantic.ValidationError, source: str, positions: dict[tuple[str | int, ...], int]
) -> list[ConfigIssue]:
    """Turns pydantic's errors into ConfigIssues with the nearest known line."""
    issues = []
    for error in exc.errors(include_url=False):
        loc = tuple(p for p in error["loc"] if isinstance(p, str | int))
        line = None
        for end in range(len(loc), -1, -1):
            if loc[:end] in positions:
                line = positions[loc[:end]]
                break
        reason = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            reason = "unknown key"
        issues.append(ConfigIssue(source, line, _dotted(loc), reason))
    return issues


def load_yaml_model(path: Path, model: type[Model]) -> Model:
    """Reads one YAML document from `path` into `model`, or raises ConfigError."""
    source = str(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError([ConfigIssue(source, None, "", f"cannot read: {exc.strerror}")]) from exc
    documents = list(iter_documents(text, source))
    if len(documents) != 1:
        raise ConfigError([ConfigIssue(source, None, "", f"expected one YAML document, found {len(documents)}")])
    data, positions = documents[0]
    if not isinstance(data, dict):
        raise ConfigError([ConfigIssue(source, 1, "", "expected a mapping at the top level")])
    try:
        return model.model_validate(data, context={"base_dir": path.resolve().parent})
    except pydantic.ValidationError as exc:
        raise ConfigError(issues_from_validation(exc, source, positions)) from exc


_DURATION = re.compile(r"^(?P<value>\d+(?:\.\d+)?)(?P<unit>ms|s|m|h|d)$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: object) -> float:
    """Parses '250ms', '5s', '2m', '1h', '30d' (or a bare number of seconds) into seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as '500ms', '5s' or '2m'")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.match(value.strip())):
        seconds = float(match["value"]) * _UNIT_SECONDS[match["unit"]]
    else:
        raise ValueError(f"invalid duration {value!r}: expected a number with a unit, e.g. '500ms', '5s', '2m'")
    if seconds < 0:
        raise ValueError("duration must not be negative")
    return seconds
