"""Conversions shared by the servicers: timestamps, Any, descriptors."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.any_pb2 import Any as AnyPb
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from liner_api.containerd.types import descriptor_pb2
from linerd.core.types import Descriptor


def timestamp(value: datetime | None) -> Timestamp:
    ts = Timestamp()
    if value is not None:
        ts.FromDatetime(value.astimezone(UTC))
    return ts


def pack(message: Message) -> AnyPb:
    """Any with the bare message name as type URL: what Go's typeurl registry expects."""
    return AnyPb(type_url=message.DESCRIPTOR.full_name, value=message.SerializeToString())


def descriptor(d: Descriptor) -> descriptor_pb2.Descriptor:
    return descriptor_pb2.Descriptor(
        media_type=d.media_type, digest=d.digest, size=d.size, annotations=d.annotations
    )


def from_descriptor(d: descriptor_pb2.Descriptor) -> Descriptor:
    return Descriptor(
        media_type=d.media_type, digest=d.digest, size=d.size, annotations=dict(d.annotations)
    )
