from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Credentials(_message.Message):
    __slots__ = ("username", "secret")
    USERNAME_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    username: str
    secret: str
    def __init__(self, username: _Optional[str] = ..., secret: _Optional[str] = ...) -> None: ...

class VerifyRequest(_message.Message):
    __slots__ = ("reference", "plain_http", "credentials", "public_key")
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    PLAIN_HTTP_FIELD_NUMBER: _ClassVar[int]
    CREDENTIALS_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    reference: str
    plain_http: bool
    credentials: Credentials
    public_key: bytes
    def __init__(self, reference: _Optional[str] = ..., plain_http: _Optional[bool] = ..., credentials: _Optional[_Union[Credentials, _Mapping]] = ..., public_key: _Optional[bytes] = ...) -> None: ...

class VerifyResponse(_message.Message):
    __slots__ = ("accepted", "requirement", "reason", "scope", "name", "digest", "policy", "policy_generation")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REQUIREMENT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    POLICY_GENERATION_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    requirement: str
    reason: str
    scope: str
    name: str
    digest: str
    policy: bool
    policy_generation: int
    def __init__(self, accepted: _Optional[bool] = ..., requirement: _Optional[str] = ..., reason: _Optional[str] = ..., scope: _Optional[str] = ..., name: _Optional[str] = ..., digest: _Optional[str] = ..., policy: _Optional[bool] = ..., policy_generation: _Optional[int] = ...) -> None: ...

class CheckRequest(_message.Message):
    __slots__ = ("policy", "name")
    POLICY_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    policy: bytes
    name: str
    def __init__(self, policy: _Optional[bytes] = ..., name: _Optional[str] = ...) -> None: ...

class CheckResponse(_message.Message):
    __slots__ = ("scopes",)
    SCOPES_FIELD_NUMBER: _ClassVar[int]
    scopes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, scopes: _Optional[_Iterable[str]] = ...) -> None: ...
