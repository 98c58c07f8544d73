from agentmesh.v1 import manifest_pb2 as _manifest_pb2
from google.protobuf import any_pb2 as _any_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetManifestRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class InvokeRequest(_message.Message):
    __slots__ = ("skill", "json", "any")
    SKILL_FIELD_NUMBER: _ClassVar[int]
    JSON_FIELD_NUMBER: _ClassVar[int]
    ANY_FIELD_NUMBER: _ClassVar[int]
    skill: str
    json: _struct_pb2.Struct
    any: _any_pb2.Any
    def __init__(self, skill: _Optional[str] = ..., json: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., any: _Optional[_Union[_any_pb2.Any, _Mapping]] = ...) -> None: ...

class InvokeResponse(_message.Message):
    __slots__ = ("json", "any")
    JSON_FIELD_NUMBER: _ClassVar[int]
    ANY_FIELD_NUMBER: _ClassVar[int]
    json: _struct_pb2.Struct
    any: _any_pb2.Any
    def __init__(self, json: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., any: _Optional[_Union[_any_pb2.Any, _Mapping]] = ...) -> None: ...
