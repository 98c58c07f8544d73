"""Token usage an agent reports in its responses, for cost metrics and GenAI span attributes.

Convention (documented in docs/sidecar.md): a response message with a field
`usage` holding `input_tokens` and `output_tokens` (or `prompt_tokens` and
`completion_tokens`), and optionally a string field `model`. Which fields a
method's response has is resolved once per method, not per call.
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

_INPUT = ("input_tokens", "prompt_tokens")
_OUTPUT = ("output_tokens", "completion_tokens")


@dataclass(frozen=True)
class Usage:
    input_tokens: int
    output_tokens: int
    model: str


@dataclass(frozen=True)
class UsageReader:
    """Reads usage from one response type; build with `for_type`, which returns None when there is none."""

    usage_field: str
    input_field: str
    output_field: str
    model_field: str | None

    @classmethod
    def for_type(cls, descriptor: Descriptor) -> UsageReader | None:
        usage = descriptor.fields_by_name.get("usage")
        if usage is None or usage.type != FieldDescriptor.TYPE_MESSAGE or usage.message_type is None:
            return None
        fields = usage.message_type.fields_by_name
        input_field = next((name for name in _INPUT if name in fields), None)
        output_field = next((name for name in _OUTPUT if name in fields), None)
        if input_field is None or output_field is None:
            return None
        model = descriptor.fields_by_name.get("model")
        model_field = "model" if model is not None and model.type == FieldDescriptor.TYPE_STRING else None
        return cls("usage", input_field, output_field, model_field)

    def read(self, message: Message) -> Usage | None:
        if not message.HasField(self.usage_field):
            return None
        usage = getattr(message, self.usage_field)
        model = getattr(message, self.model_field) if self.model_field else ""
        return Usage(int(getattr(usage, self.input_field)), int(getattr(usage, self.output_field)), model or "unknown")
