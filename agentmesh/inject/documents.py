"""Reading and writing the Kubernetes documents `agentmesh inject` rewrites.

Input is one or more YAML streams (multi-document, or JSON, which is YAML);
output keeps the documents in order, as YAML without comments or as JSON.
Malformed input is refused with an `InjectError` naming the source, the
document (1-based) and the line and column or the field path.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import yaml

OutputFormat = Literal["yaml", "json"]


class InjectError(Exception):
    """Input that cannot be injected: where (source, document, path or line) and why."""

    def __init__(self, source: str, message: str, *, document: int | None = None, path: str = "") -> None:
        self.source = source
        self.document = document
        self.path = path
        self.message = message
        where = [source]
        if document is not None:
            where.append(f"document {document}")
        if path:
            where.append(path)
        super().__init__(f"{': '.join(where)}: {message}")


@dataclass(frozen=True)
class Document:
    """One parsed document and where it came from."""

    source: str
    index: int  # 1-based, within its source
    body: Any

    def error(self, path: str, message: str) -> InjectError:
        """An InjectError located at `path` within this document."""
        return InjectError(self.source, message, document=self.index, path=path)


def read_documents(text: str, source: str) -> list[Document]:
    """Parses every document of a YAML (or JSON) stream; empty documents are dropped."""
    documents: list[Document] = []
    loader = yaml.SafeLoader(text)
    index = 0
    try:
        while loader.check_data():
            index += 1
            body = loader.get_data()
            if body is not None:
                documents.append(Document(source, index, body))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark is not None else source
        problem = " ".join(part for part in (exc.context, exc.problem) if part)
        raise InjectError(where, f"invalid YAML: {problem}", document=index) from exc
    except yaml.YAMLError as exc:
        raise InjectError(source, f"invalid YAML: {exc}", document=index) from exc
    finally:
        loader.dispose()
    return documents


class _Dumper(yaml.SafeDumper):
    """Block style; multi-line strings (a ConfigMap's files) as literal blocks."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def dump_documents(bodies: Iterable[Any], output: OutputFormat) -> str:
    """Renders documents in order: YAML separated by `---`, or JSON (several as a v1 List)."""
    items = list(bodies)
    if output == "json":
        if len(items) == 1:
            return json.dumps(items[0], indent=2) + "\n"
        return json.dumps({"apiVersion": "v1", "kind": "List", "items": items}, indent=2) + "\n"
    return "---\n".join(
        yaml.dump(body, Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True, width=1 << 16)
        for body in items
    )
