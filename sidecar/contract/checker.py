"""Checks messages against the contract: decoding, unknown fields, protovalidate rules.

One `MessageChecker` per sidecar holds the protovalidate engine (which caches
compiled rules per message type). Each check raises ContractViolation with
google.rpc.BadRequest-style field violations, so the agent never sees a bad
request and the caller never silently gets a bad response.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import protovalidate
from google.protobuf import descriptor, json_format, message
from google.protobuf.unknown_fields import UnknownFieldSet

from sidecar.contract.compiled import MethodContract
from sidecar.errors import ContractViolation, FieldViolation

_MESSAGE = descriptor.FieldDescriptor.TYPE_MESSAGE
# Message types whose shape is remembered; contracts hold far fewer.
_MAX_REMEMBERED_TYPES = 4096


class MessageChecker:
    """Parses and validates request/response messages of compiled methods."""

    def __init__(self) -> None:
        self._validator = protovalidate.Validator()
        # message descriptor -> does the type contain message fields (recurse?); keyed by the descriptor
        # itself (one object per type) so a check reads no name.
        self._nested: dict[Any, bool] = {}

    def parse(self, method: MethodContract, data: bytes, *, side: str) -> message.Message:
        """Decodes wire bytes into the method's request or response type and checks it."""
        cls = method.request_class if side == "request" else method.response_class
        msg = cls()
        try:
            msg.ParseFromString(data)
        except message.DecodeError as exc:
            raise ContractViolation(
                f"{side} is not a valid {msg.DESCRIPTOR.full_name}: {exc}", side=side, reason="malformed"
            ) from exc
        self.check(msg, side=side)
        return msg

    def from_json(
        self, method: MethodContract, payload: str | bytes | Mapping[str, Any], *, side: str
    ) -> message.Message:
        """Builds the typed message from its JSON mapping; unknown keys are violations."""
        cls = method.request_class if side == "request" else method.response_class
        msg = cls()
        try:
            data = payload if isinstance(payload, Mapping) else json.loads(payload)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ContractViolation(f"{side} is not valid JSON: {exc}", side=side, reason="invalid_json") from exc
        if not isinstance(data, Mapping):
            raise ContractViolation(
                f"{side} must be a JSON object for {msg.DESCRIPTOR.full_name}, got {type(data).__name__}",
                side=side,
                reason="invalid_json",
            )
        try:
            json_format.ParseDict(dict(data), msg, ignore_unknown_fields=False, descriptor_pool=_pool_of(msg))
        except json_format.ParseError as exc:
            detail = str(exc).split("\n", 1)[0]
            raise ContractViolation(
                f"{side} does not match {msg.DESCRIPTOR.full_name}: {detail}",
                side=side,
                reason="unknown_field" if "no field named" in detail else "wrong_type",
                violations=(FieldViolation(_json_error_field(detail), detail),),
            ) from exc
        self.check(msg, side=side, unknown_fields=False)
        return msg

    def check(self, msg: message.Message, *, side: str, unknown_fields: bool = True) -> None:
        """Raises ContractViolation for unknown fields or protovalidate rule violations."""
        if unknown_fields:
            unknown = self._unknown_fields(msg, "")
            if unknown:
                raise ContractViolation(
                    f"{side} has fields not in {msg.DESCRIPTOR.full_name}: {', '.join(unknown)}",
                    side=side,
                    reason="unknown_field",
                    violations=tuple(FieldViolation(u, "unknown field", "UNKNOWN_FIELD") for u in unknown),
                )
        try:
            found = self._validator.collect_violations(msg)
        except (protovalidate.CompilationError, protovalidate.EvaluationError) as exc:
            raise ContractViolation(
                f"{side} rules of {msg.DESCRIPTOR.full_name} cannot be evaluated: {exc}",
                side=side,
                reason="rule_error",
            ) from exc
        if found:
            violations = tuple(
                FieldViolation(_field_path(v.proto.field), v.proto.message, v.proto.rule_id) for v in found
            )
            summary = "; ".join(f"{v.field}: {v.description}" if v.field else v.description for v in violations)
            raise ContractViolation(
                f"{side} violates {msg.DESCRIPTOR.full_name} rules: {summary}",
                side=side,
                reason="rule_violation",
                violations=violations,
            )

    def _unknown_fields(self, msg: message.Message, prefix: str) -> list[str]:
        unknown: Any = UnknownFieldSet(msg)
        found = [f"{prefix}#{f.field_number}" for f in unknown]
        if not self._has_nested(msg.DESCRIPTOR):
            return found
        for field, value in msg.ListFields():
            if field.type != _MESSAGE:
                continue
            name = f"{prefix}{field.name}"
            entry: Any = field.message_type
            if entry.GetOptions().map_entry:
                if entry.fields_by_name["value"].type == _MESSAGE:
                    for key, item in value.items():
                        found += self._unknown_fields(item, f"{name}[{key!r}].")
            elif field.is_repeated:
                for index, item in enumerate(value):
                    found += self._unknown_fields(item, f"{name}[{index}].")
            else:
                found += self._unknown_fields(value, f"{name}.")
        return found

    def _has_nested(self, desc: Any) -> bool:
        known = self._nested.get(desc)
        if known is None:
            known = any(f.type == _MESSAGE for f in desc.fields)
            if len(self._nested) >= _MAX_REMEMBERED_TYPES:
                self._nested.clear()  # contracts were reloaded many times: forget the old types
            self._nested[desc] = known
        return known


def _pool_of(msg: message.Message) -> Any:
    return msg.DESCRIPTOR.file.pool


def _field_path(path: Any) -> str:
    """Renders a protovalidate FieldPath as `lines[1].sku` or `by_name['x']`."""
    text = ""
    for element in path.elements:
        text = f"{text}.{element.field_name}" if text else element.field_name
        subscript = element.subscript  # a protobuf-py Oneof (field, value) or None
        if subscript is not None:
            text += f"[{subscript.value!r}]"
    return text


def _json_error_field(detail: str) -> str:
    # json_format messages look like 'Failed to parse q field: ...' or
    # 'Message type "x.Y" has no field named "z" at "Y".'
    if 'no field named "' in detail:
        return detail.split('no field named "', 1)[1].split('"', 1)[0]
    if "Failed to parse " in detail and " field" in detail:
        return detail.split("Failed to parse ", 1)[1].split(" field", 1)[0]
    return ""
