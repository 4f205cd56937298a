"""Decoding event payloads: an envelope's Any (bare message name as type URL, as Go's typeurl
writes it) to the generated message, then to JSON-able form with the proto field names."""

from __future__ import annotations

import base64
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message

# Imported for the side effect too: nested Anys (a container's runc options) resolve through
# the default descriptor pool.
from liner_api.containerd.events import (
    container_pb2,
    content_pb2,
    image_pb2,
    namespace_pb2,
    snapshot_pb2,
    task_pb2,
)
from liner_api.containerd.runc.v1 import options_pb2
from liner_api.liner.events import policy_pb2

_MODULES = (
    container_pb2,
    content_pb2,
    image_pb2,  # containerd.services.images.v1.ImageCreate/Update/Delete
    namespace_pb2,
    snapshot_pb2,
    task_pb2,
    options_pb2,
    policy_pb2,  # liner.events.ImageRefused (topic /images/refused)
)

EVENT_TYPES: dict[str, type[Message]] = {
    module.DESCRIPTOR.message_types_by_name[name].full_name: getattr(module, name)
    for module in _MODULES
    for name in module.DESCRIPTOR.message_types_by_name
}


def message_type(type_url: str) -> type[Message] | None:
    """The generated class for a type URL: the bare full name, or with a `.../` prefix."""
    return EVENT_TYPES.get(type_url) or EVENT_TYPES.get(type_url.rsplit("/", 1)[-1])


def to_json(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def decode(type_url: str, value: bytes) -> dict[str, Any] | None:
    """The payload as a dict; None for a type liner does not know or bytes that do not decode."""
    cls = message_type(type_url)
    if cls is None:
        return None
    try:
        return to_json(cls.FromString(value))
    except (DecodeError, json_format.Error, TypeError, KeyError):
        return None


def payload_json(type_url: str, value: bytes, decoded: dict[str, Any] | None) -> dict[str, Any]:
    """What `liner events` prints for a payload: the decoded fields, or for an unknown type its
    URL and base64 bytes."""
    if decoded is not None:
        return decoded
    return {"type_url": type_url, "value": base64.b64encode(value).decode()}
