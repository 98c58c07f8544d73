from google.protobuf import descriptor_pb2 as _descriptor_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor
SKILL_FIELD_NUMBER: _ClassVar[int]
skill: _descriptor.FieldDescriptor

class CostModel(_message.Message):
    __slots__ = ("per_call", "per_1k_input_tokens", "per_1k_output_tokens")
    PER_CALL_FIELD_NUMBER: _ClassVar[int]
    PER_1K_INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PER_1K_OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    per_call: float
    per_1k_input_tokens: float
    per_1k_output_tokens: float
    def __init__(self, per_call: _Optional[float] = ..., per_1k_input_tokens: _Optional[float] = ..., per_1k_output_tokens: _Optional[float] = ...) -> None: ...

class SkillOptions(_message.Message):
    __slots__ = ("idempotent", "timeout_ms", "tags", "cost", "description")
    IDEMPOTENT_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    idempotent: bool
    timeout_ms: int
    tags: _containers.RepeatedScalarFieldContainer[str]
    cost: CostModel
    description: str
    def __init__(self, idempotent: _Optional[bool] = ..., timeout_ms: _Optional[int] = ..., tags: _Optional[_Iterable[str]] = ..., cost: _Optional[_Union[CostModel, _Mapping]] = ..., description: _Optional[str] = ...) -> None: ...
