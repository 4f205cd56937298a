from liner_api.containerd.types import descriptor_pb2 as _descriptor_pb2
from liner_api.containerd.types import platform_pb2 as _platform_pb2
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

class PullRequest(_message.Message):
    __slots__ = ("reference", "platforms", "all_platforms", "snapshotter", "skip_unpack", "plain_http", "credentials")
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    PLATFORMS_FIELD_NUMBER: _ClassVar[int]
    ALL_PLATFORMS_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOTTER_FIELD_NUMBER: _ClassVar[int]
    SKIP_UNPACK_FIELD_NUMBER: _ClassVar[int]
    PLAIN_HTTP_FIELD_NUMBER: _ClassVar[int]
    CREDENTIALS_FIELD_NUMBER: _ClassVar[int]
    reference: str
    platforms: _containers.RepeatedCompositeFieldContainer[_platform_pb2.Platform]
    all_platforms: bool
    snapshotter: str
    skip_unpack: bool
    plain_http: bool
    credentials: Credentials
    def __init__(self, reference: _Optional[str] = ..., platforms: _Optional[_Iterable[_Union[_platform_pb2.Platform, _Mapping]]] = ..., all_platforms: _Optional[bool] = ..., snapshotter: _Optional[str] = ..., skip_unpack: _Optional[bool] = ..., plain_http: _Optional[bool] = ..., credentials: _Optional[_Union[Credentials, _Mapping]] = ...) -> None: ...

class BlobProgress(_message.Message):
    __slots__ = ("descriptor", "offset", "state")
    DESCRIPTOR_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    descriptor: _descriptor_pb2.Descriptor
    offset: int
    state: str
    def __init__(self, descriptor: _Optional[_Union[_descriptor_pb2.Descriptor, _Mapping]] = ..., offset: _Optional[int] = ..., state: _Optional[str] = ...) -> None: ...

class PullProgress(_message.Message):
    __slots__ = ("blobs", "name", "target", "done")
    BLOBS_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    blobs: _containers.RepeatedCompositeFieldContainer[BlobProgress]
    name: str
    target: _descriptor_pb2.Descriptor
    done: bool
    def __init__(self, blobs: _Optional[_Iterable[_Union[BlobProgress, _Mapping]]] = ..., name: _Optional[str] = ..., target: _Optional[_Union[_descriptor_pb2.Descriptor, _Mapping]] = ..., done: _Optional[bool] = ...) -> None: ...

class PushRequest(_message.Message):
    __slots__ = ("reference", "image", "plain_http", "credentials", "platforms", "target")
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    PLAIN_HTTP_FIELD_NUMBER: _ClassVar[int]
    CREDENTIALS_FIELD_NUMBER: _ClassVar[int]
    PLATFORMS_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    reference: str
    image: str
    plain_http: bool
    credentials: Credentials
    platforms: _containers.RepeatedCompositeFieldContainer[_platform_pb2.Platform]
    target: _descriptor_pb2.Descriptor
    def __init__(self, reference: _Optional[str] = ..., image: _Optional[str] = ..., plain_http: _Optional[bool] = ..., credentials: _Optional[_Union[Credentials, _Mapping]] = ..., platforms: _Optional[_Iterable[_Union[_platform_pb2.Platform, _Mapping]]] = ..., target: _Optional[_Union[_descriptor_pb2.Descriptor, _Mapping]] = ...) -> None: ...

class PushProgress(_message.Message):
    __slots__ = ("blobs", "name", "target", "done")
    BLOBS_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    blobs: _containers.RepeatedCompositeFieldContainer[BlobProgress]
    name: str
    target: _descriptor_pb2.Descriptor
    done: bool
    def __init__(self, blobs: _Optional[_Iterable[_Union[BlobProgress, _Mapping]]] = ..., name: _Optional[str] = ..., target: _Optional[_Union[_descriptor_pb2.Descriptor, _Mapping]] = ..., done: _Optional[bool] = ...) -> None: ...

class ExportRequest(_message.Message):
    __slots__ = ("names", "platforms", "all_platforms", "docker_manifest")
    NAMES_FIELD_NUMBER: _ClassVar[int]
    PLATFORMS_FIELD_NUMBER: _ClassVar[int]
    ALL_PLATFORMS_FIELD_NUMBER: _ClassVar[int]
    DOCKER_MANIFEST_FIELD_NUMBER: _ClassVar[int]
    names: _containers.RepeatedScalarFieldContainer[str]
    platforms: _containers.RepeatedCompositeFieldContainer[_platform_pb2.Platform]
    all_platforms: bool
    docker_manifest: bool
    def __init__(self, names: _Optional[_Iterable[str]] = ..., platforms: _Optional[_Iterable[_Union[_platform_pb2.Platform, _Mapping]]] = ..., all_platforms: _Optional[bool] = ..., docker_manifest: _Optional[bool] = ...) -> None: ...

class ExportChunk(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class ImportOptions(_message.Message):
    __slots__ = ("snapshotter", "skip_unpack", "base_name", "all_platforms")
    SNAPSHOTTER_FIELD_NUMBER: _ClassVar[int]
    SKIP_UNPACK_FIELD_NUMBER: _ClassVar[int]
    BASE_NAME_FIELD_NUMBER: _ClassVar[int]
    ALL_PLATFORMS_FIELD_NUMBER: _ClassVar[int]
    snapshotter: str
    skip_unpack: bool
    base_name: str
    all_platforms: bool
    def __init__(self, snapshotter: _Optional[str] = ..., skip_unpack: _Optional[bool] = ..., base_name: _Optional[str] = ..., all_platforms: _Optional[bool] = ...) -> None: ...

class ImportChunk(_message.Message):
    __slots__ = ("options", "data")
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    options: ImportOptions
    data: bytes
    def __init__(self, options: _Optional[_Union[ImportOptions, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class ImportedImage(_message.Message):
    __slots__ = ("name", "target", "created")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    name: str
    target: _descriptor_pb2.Descriptor
    created: bool
    def __init__(self, name: _Optional[str] = ..., target: _Optional[_Union[_descriptor_pb2.Descriptor, _Mapping]] = ..., created: _Optional[bool] = ...) -> None: ...

class ImportResponse(_message.Message):
    __slots__ = ("images",)
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedCompositeFieldContainer[ImportedImage]
    def __init__(self, images: _Optional[_Iterable[_Union[ImportedImage, _Mapping]]] = ...) -> None: ...
