"""Conversions shared by the servicers: timestamps, Any, descriptors."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import grpc
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


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def framed(payload: bytes, field: int = 1) -> bytes:
    """A serialized message as one element of the repeated message field `field` of an
    enclosing message: the enclosing message's serialization is its elements' concatenation
    (protobuf's encoding: tag, length, payload)."""
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


AddServicer = Callable[[Any, grpc.aio.Server], None]


def answering_bytes(add: AddServicer, *methods: str) -> AddServicer:
    """The generated `add_*Servicer_to_server` with `methods` (names of the service's methods)
    free to answer with bytes, their answer serialized already: a List of hundreds of records
    answers from serializations kept per record instead of building and serializing every
    record's message per call. Their other answers (messages) are serialized as usual."""

    def add_to_server(servicer: Any, server: grpc.aio.Server) -> None:
        add(servicer, _PassBytes(server, methods))  # type: ignore[arg-type]

    return add_to_server


def _bytes_or(serializer: Callable[[Any], bytes] | None) -> Callable[[Any], bytes]:
    def serialize(answer: Any) -> bytes:
        if type(answer) is bytes:
            return answer
        assert serializer is not None
        return serializer(answer)

    return serialize


class _PassBytes:
    """A server as the generated registration sees it: the handlers of `methods` get a
    serializer that passes bytes through; everything else goes to the server unchanged."""

    def __init__(self, server: grpc.aio.Server, methods: tuple[str, ...]) -> None:
        self._server = server
        self._methods = methods

    def _handler(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        if method.rsplit("/", 1)[-1] not in self._methods:
            return handler
        return handler._replace(response_serializer=_bytes_or(handler.response_serializer))  # type: ignore[attr-defined]

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._server.add_generic_rpc_handlers(tuple(_PassBytesGeneric(h, self) for h in handlers))

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        self._server.add_registered_method_handlers(
            service, {name: self._handler(name, h) for name, h in handlers.items()}
        )

    def __getattr__(self, name: str) -> Any:
        return getattr(self._server, name)


class _PassBytesGeneric(grpc.GenericRpcHandler):
    def __init__(self, inner: grpc.GenericRpcHandler, owner: _PassBytes) -> None:
        self._inner = inner
        self._owner = owner

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        handler = self._inner.service(details)
        return None if handler is None else self._owner._handler(details.method, handler)
