from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
from google.protobuf.any_pb2 import Any as AnyPb
from google.protobuf.empty_pb2 import Empty

from liner_api.containerd.services.events.v1 import events_pb2, events_pb2_grpc
from linerd import context
from linerd.core import filters, validate
from linerd.errdefs import InvalidArgument
from linerd.events import Event, Exchange
from linerd.services.convert import timestamp


def _check(topic: str, event: AnyPb) -> None:
    if not topic.startswith("/") or len(topic) < 2:
        raise InvalidArgument(f"event topic {topic!r} must start with '/'")
    if not event.type_url:
        raise InvalidArgument("event must carry a type URL")


class EventsService(events_pb2_grpc.EventsServicer):
    def __init__(self, exchange: Exchange) -> None:
        self._exchange = exchange

    async def Publish(
        self, request: events_pb2.PublishRequest, ctx: grpc.aio.ServicerContext
    ) -> Empty:
        _check(request.topic, request.event)
        self._exchange.publish(
            context.namespace(), request.topic, request.event.type_url, request.event.value
        )
        return Empty()

    async def Forward(
        self, request: events_pb2.ForwardRequest, ctx: grpc.aio.ServicerContext
    ) -> Empty:
        envelope = request.envelope
        validate.identifier(envelope.namespace, "namespace")
        _check(envelope.topic, envelope.event)
        self._exchange.publish(
            envelope.namespace, envelope.topic, envelope.event.type_url, envelope.event.value
        )
        return Empty()

    async def Subscribe(
        self, request: events_pb2.SubscribeRequest, ctx: grpc.aio.ServicerContext
    ) -> AsyncIterator[events_pb2.Envelope]:
        match = filters.parse_all(list(request.filters))

        def wanted(event: Event) -> bool:
            fields = {"namespace": event.namespace, "topic": event.topic}
            return match.match(filters.dict_adaptor(fields))

        async for event in self._exchange.subscribe(wanted):
            yield events_pb2.Envelope(
                timestamp=timestamp(event.timestamp),
                namespace=event.namespace,
                topic=event.topic,
                event=AnyPb(type_url=event.type_url, value=event.payload),
            )
