from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class ImageRefused(_message.Message):
    __slots__ = ("name", "digest", "requirement", "reason", "scope", "via", "policy_generation")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    REQUIREMENT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    VIA_FIELD_NUMBER: _ClassVar[int]
    POLICY_GENERATION_FIELD_NUMBER: _ClassVar[int]
    name: str
    digest: str
    requirement: str
    reason: str
    scope: str
    via: str
    policy_generation: int
    def __init__(self, name: _Optional[str] = ..., digest: _Optional[str] = ..., requirement: _Optional[str] = ..., reason: _Optional[str] = ..., scope: _Optional[str] = ..., via: _Optional[str] = ..., policy_generation: _Optional[int] = ...) -> None: ...
