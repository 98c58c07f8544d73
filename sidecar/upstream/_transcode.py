"""Maps a typed request onto an HTTP request for an agent that speaks HTTP/JSON.

Two conventions, chosen per method when the method's route is first needed:

- the method's `google.api.http` rule, read the way Envoy's
  grpc_json_transcoder and grpc-gateway read it: path variables (`{name}`,
  `{a.b}`, `{parent=projects/*}`) are filled from request fields and
  percent-encoded, the body is the whole message minus path fields (`*`), one
  field (`body: "thing"`) or absent (`""`), and every other set field becomes
  a query parameter (repeated fields repeat the parameter);
- otherwise the Connect convention: `POST /<package.Service>/<Method>` with
  the whole message as the JSON body.

`HttpRoute.for_method` compiles a rule once (templates parsed, field paths
resolved against the request descriptor); `HttpRoute.build` runs per request.
"""

from __future__ import annotations

import base64
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.internal import type_checkers
from google.protobuf.message import Message

from sidecar.contract import MethodContract
from sidecar.errors import ContractViolation

# Well-known types whose JSON form is a single scalar, so they may sit in a
# URL path or query parameter.
_SCALAR_MESSAGES = frozenset(
    f"google.protobuf.{name}"
    for name in (
        "Timestamp",
        "Duration",
        "FieldMask",
        "DoubleValue",
        "FloatValue",
        "Int64Value",
        "UInt64Value",
        "Int32Value",
        "UInt32Value",
        "BoolValue",
        "StringValue",
        "BytesValue",
    )
)
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True, slots=True)
class _Variable:
    """One `{field.path=pattern}` path variable."""

    fields: tuple[FieldDescriptor, ...]
    pattern: str
    matcher: re.Pattern[str]
    # Multi-segment variables keep '/' unescaped (google.api.http, "Path template syntax").
    multi_segment: bool

    @property
    def name(self) -> str:
        return ".".join(f.name for f in self.fields)


# Field names excluded from the body or query, as a tree: name -> subtree, or
# None when the whole field is excluded.
_Exclusions = Mapping[str, "_Exclusions | None"]


@dataclass(frozen=True, slots=True)
class HttpRoute:
    """How one method's requests become HTTP requests; compiled once per method."""

    verb: str
    # Literal path pieces and variables, concatenated in order.
    parts: tuple[str | _Variable, ...]
    # "*" (whole message minus path fields), "" (no body) or a top-level field name.
    body: str
    # True for the Connect convention (the message is the body, no rule).
    connect: bool
    _exclusions: _Exclusions

    @classmethod
    def for_method(cls, method: MethodContract) -> HttpRoute:
        """Compiles the method's HTTP rule, or the Connect route when it has none.

        Raises ValueError naming the method when the rule cannot be used.
        """
        rule = method.http_rule
        if rule is None:
            return cls("POST", (method.path,), "*", True, {})
        try:
            parts = _parse_template(rule.template, method.input)
            body = rule.body
            if body not in ("", "*") and body not in method.input.fields_by_name:
                raise ValueError(f"body field {body!r} is not a field of {method.input.full_name}")
        except ValueError as exc:
            raise ValueError(f"{method.path}: google.api.http {rule.verb} {rule.template!r}: {exc}") from None
        exclusions: dict[str, Any] = {}
        for part in parts:
            if isinstance(part, _Variable):
                _exclude(exclusions, [f.name for f in part.fields])
        if body not in ("", "*"):
            _exclude(exclusions, [body])
        return cls(rule.verb, tuple(parts), body, False, exclusions)

    def build(self, request: Message, *, proto_names: bool) -> tuple[str, bytes | None]:
        """The request target (path and query) and JSON body for `request`.

        Raises ContractViolation(side="request") when a path field's value does
        not fit its template or a set field cannot be sent as a query parameter.
        """
        pool = request.DESCRIPTOR.file.pool
        path = "".join(part if isinstance(part, str) else _expand(part, request) for part in self.parts)
        body: bytes | None = None
        if self.body == "*":
            message = request
            if self._exclusions:
                message = type(request)()
                message.CopyFrom(request)
                _clear(message, self._exclusions)
            body = _dump(_to_dict(message, proto_names, pool))
        elif self.body:
            body = _dump(_field_json(request, self.body, proto_names))
        query: list[tuple[str, str]] = []
        if self.body != "*":
            _query_params(request, "", self._exclusions, query, proto_names)
        if query:
            path += "?" + "&".join(f"{quote(k, safe='.')}={quote(v, safe='')}" for k, v in query)
        return path, body


def _parse_template(template: str, input_type: Descriptor) -> list[str | _Variable]:
    if not template.startswith("/"):
        raise ValueError("the template must start with '/'")
    segments, verb = _split_segments(template[1:])
    parts: list[str | _Variable] = []
    for segment in segments:
        parts.append("/")
        if segment.startswith("{"):
            parts.append(_parse_variable(segment[1:-1], input_type))
        elif segment in ("*", "**"):
            raise ValueError(f"wildcard {segment!r} outside a variable cannot be filled from the request")
        elif not segment or "{" in segment or "}" in segment:
            raise ValueError(f"invalid segment {segment!r}")
        else:
            parts.append(quote(segment, safe="-_.~!$&'()*+,;=:@"))
    if verb is not None:
        parts.append(":" + quote(verb, safe="-_.~"))
    # Merge adjacent literals so build() joins fewer pieces.
    merged: list[str | _Variable] = []
    for part in parts:
        if merged and isinstance(part, str) and isinstance(merged[-1], str):
            merged[-1] += part
        else:
            merged.append(part)
    return merged


def _split_segments(text: str) -> tuple[list[str], str | None]:
    """Splits on '/' outside braces; a trailing ':verb' after the last segment is returned apart."""
    segments: list[str] = []
    depth = 0
    current = ""
    verb: str | None = None
    for i, char in enumerate(text):
        if char == "{":
            depth += 1
            if depth > 1:
                raise ValueError("nested '{'")
        elif char == "}":
            depth -= 1
            if depth < 0:
                raise ValueError("unbalanced '}'")
        elif char == "/" and depth == 0:
            segments.append(current)
            current = ""
            continue
        elif char == ":" and depth == 0:
            verb = text[i + 1 :]
            if not verb or "/" in verb or "{" in verb:
                raise ValueError(f"invalid verb {verb!r}")
            break
        current += char
    if depth:
        raise ValueError("unbalanced '{'")
    segments.append(current)
    return segments, verb


def _parse_variable(text: str, input_type: Descriptor) -> _Variable:
    field_path, _, pattern = text.partition("=")
    pattern = pattern or "*"
    names = field_path.split(".")
    if not all(_IDENT.match(n) for n in names):
        raise ValueError(f"invalid field path {field_path!r}")
    fields: list[FieldDescriptor] = []
    descriptor: Descriptor | None = input_type
    for i, name in enumerate(names):
        if descriptor is None or name not in descriptor.fields_by_name:
            owner = descriptor.full_name if descriptor else ".".join(names[:i])
            raise ValueError(f"path variable {field_path!r}: {owner} has no field {name!r}")
        field = descriptor.fields_by_name[name]
        if field.is_repeated:
            raise ValueError(f"path variable {field_path!r}: {name!r} is repeated")
        fields.append(field)
        descriptor = field.message_type
    leaf = fields[-1]
    if leaf.message_type is not None and leaf.message_type.full_name not in _SCALAR_MESSAGES:
        raise ValueError(f"path variable {field_path!r}: a message field cannot be a path value")
    multi = "/" in pattern or "**" in pattern
    # A single-segment value is escaped whole ('/' too), so '*' takes any non-empty value;
    # in a multi-segment value '/' separates segments and '*' is one of them.
    star = "[^/]+" if multi else ".+"
    regex = ""
    for i, piece in enumerate(pattern.split("/")):
        if piece == "**":
            # Zero or more segments: "a/**" also matches "a".
            regex += "(?:/.*)?" if i else ".*"
            continue
        if piece == "*":
            piece_regex = star
        elif piece and "*" not in piece and "{" not in piece:
            piece_regex = re.escape(piece)
        else:
            raise ValueError(f"path variable {field_path!r}: invalid pattern {pattern!r}")
        regex += ("/" if i else "") + piece_regex
    return _Variable(tuple(fields), pattern, re.compile(regex), multi)


def _exclude(tree: dict[str, Any], names: list[str]) -> None:
    head, rest = names[0], names[1:]
    if not rest:
        tree[head] = None
        return
    sub = tree.setdefault(head, {})
    if sub is not None:
        _exclude(sub, rest)


def _clear(message: Message, exclusions: _Exclusions) -> None:
    for name, sub in exclusions.items():
        if sub is None:
            message.ClearField(name)
        elif message.HasField(name):
            _clear(getattr(message, name), sub)


def _expand(variable: _Variable, request: Message) -> str:
    value: Any = request
    for field in variable.fields:
        value = getattr(value, field.name)
    text = _scalar_text(variable.fields[-1], value)
    if not variable.matcher.fullmatch(text):
        raise ContractViolation(
            f"field {variable.name!r} = {text!r} does not match the HTTP path template {{{variable.name}="
            f"{variable.pattern}}}",
            side="request",
            reason="http_path",
        )
    return quote(text, safe="/" if variable.multi_segment else "")


def _query_params(
    message: Message, prefix: str, exclusions: _Exclusions, out: list[tuple[str, str]], proto_names: bool
) -> None:
    for field, value in message.ListFields():
        if field.is_extension:
            continue
        sub = exclusions.get(field.name, {})
        if sub is None:
            continue
        name = prefix + (field.name if proto_names else field.json_name)
        message_type = field.message_type
        scalar_message = message_type is not None and message_type.full_name in _SCALAR_MESSAGES
        if message_type is not None and message_type.GetOptions().map_entry:
            raise _not_a_query_param(name, "a map")
        if field.is_repeated:
            if message_type is not None and not scalar_message:
                raise _not_a_query_param(name, "a repeated message")
            out.extend((name, _scalar_text(field, item)) for item in value)
        elif message_type is not None and not scalar_message:
            _query_params(value, name + ".", sub, out, proto_names)
        else:
            out.append((name, _scalar_text(field, value)))


def _not_a_query_param(name: str, kind: str) -> ContractViolation:
    return ContractViolation(
        f"field {name!r} is {kind} and cannot be sent as an HTTP query parameter by this method's google.api.http rule",
        side="request",
        reason="http_query",
    )


def _scalar_text(field: FieldDescriptor, value: Any) -> str:
    """The proto3 JSON text of one scalar value, as used in paths and query strings."""
    kind = field.type
    if kind == FieldDescriptor.TYPE_STRING:
        return str(value)
    if kind == FieldDescriptor.TYPE_BOOL:
        return "true" if value else "false"
    if kind == FieldDescriptor.TYPE_ENUM:
        enum_value = field.enum_type.values_by_number.get(value) if field.enum_type is not None else None
        return enum_value.name if enum_value is not None else str(value)
    if kind == FieldDescriptor.TYPE_BYTES:
        return base64.urlsafe_b64encode(value).decode("ascii")
    if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        if kind == FieldDescriptor.TYPE_FLOAT:
            value = type_checkers.ToShortestFloat(value)
        return repr(value)
    if kind in (FieldDescriptor.TYPE_MESSAGE, FieldDescriptor.TYPE_GROUP):
        rendered = json_format.MessageToDict(value)
        if isinstance(rendered, bool):
            return "true" if rendered else "false"
        return str(rendered)
    return str(value)


def _to_dict(message: Message, proto_names: bool, pool: Any) -> Any:
    return json_format.MessageToDict(message, preserving_proto_field_name=proto_names, descriptor_pool=pool)


def _field_json(request: Message, name: str, proto_names: bool) -> Any:
    field = request.DESCRIPTOR.fields_by_name[name]
    pool: Any = request.DESCRIPTOR.file.pool
    if field.message_type is not None and not field.is_repeated:
        return _to_dict(getattr(request, field.name), proto_names, pool)
    rendered = json_format.MessageToDict(
        request,
        always_print_fields_with_no_presence=True,
        preserving_proto_field_name=proto_names,
        descriptor_pool=pool,
    )
    return rendered.get(field.name if proto_names else field.json_name)


def _dump(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
