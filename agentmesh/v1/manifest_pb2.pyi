import datetime

from agentmesh.v1 import options_pb2 as _options_pb2
from google.protobuf import descriptor_pb2 as _descriptor_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Manifest(_message.Message):
    __slots__ = ("name", "version", "team", "description", "services", "descriptors", "skills", "slo", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TEAM_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTORS_FIELD_NUMBER: _ClassVar[int]
    SKILLS_FIELD_NUMBER: _ClassVar[int]
    SLO_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    team: str
    description: str
    services: _containers.RepeatedScalarFieldContainer[str]
    descriptors: _descriptor_pb2.FileDescriptorSet
    skills: _containers.RepeatedCompositeFieldContainer[Skill]
    slo: Slo
    labels: _containers.ScalarMap[str, str]
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., team: _Optional[str] = ..., description: _Optional[str] = ..., services: _Optional[_Iterable[str]] = ..., descriptors: _Optional[_Union[_descriptor_pb2.FileDescriptorSet, _Mapping]] = ..., skills: _Optional[_Iterable[_Union[Skill, _Mapping]]] = ..., slo: _Optional[_Union[Slo, _Mapping]] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Skill(_message.Message):
    __slots__ = ("method", "input_type", "output_type", "server_streaming", "idempotent", "default_timeout", "tags", "cost", "description")
    METHOD_FIELD_NUMBER: _ClassVar[int]
    INPUT_TYPE_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TYPE_FIELD_NUMBER: _ClassVar[int]
    SERVER_STREAMING_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENT_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    method: str
    input_type: str
    output_type: str
    server_streaming: bool
    idempotent: bool
    default_timeout: _duration_pb2.Duration
    tags: _containers.RepeatedScalarFieldContainer[str]
    cost: _options_pb2.CostModel
    description: str
    def __init__(self, method: _Optional[str] = ..., input_type: _Optional[str] = ..., output_type: _Optional[str] = ..., server_streaming: _Optional[bool] = ..., idempotent: _Optional[bool] = ..., default_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., tags: _Optional[_Iterable[str]] = ..., cost: _Optional[_Union[_options_pb2.CostModel, _Mapping]] = ..., description: _Optional[str] = ...) -> None: ...

class Slo(_message.Message):
    __slots__ = ("availability", "latency_threshold", "latency_target")
    AVAILABILITY_FIELD_NUMBER: _ClassVar[int]
    LATENCY_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    LATENCY_TARGET_FIELD_NUMBER: _ClassVar[int]
    availability: float
    latency_threshold: _duration_pb2.Duration
    latency_target: float
    def __init__(self, availability: _Optional[float] = ..., latency_threshold: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., latency_target: _Optional[float] = ...) -> None: ...
