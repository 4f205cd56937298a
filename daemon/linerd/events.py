"""The event exchange: publishers hand in encoded events, subscribers get them in order.

Events travel as (topic, type URL, payload bytes) so the exchange needs no protobuf; the
services encode containerd's event messages. A subscriber that falls too far behind is
dropped rather than allowed to grow memory without bound.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog

log = structlog.get_logger("linerd.events")

_QUEUE_LIMIT = 4096


@dataclass(frozen=True, slots=True)
class Event:
    timestamp: datetime
    namespace: str
    topic: str
    type_url: str
    payload: bytes


Matcher = Callable[[Event], bool]


class Exchange:
    def __init__(self) -> None:
        self._subscribers: set[asyncio.Queue[Event | None]] = set()

    def publish(self, namespace: str, topic: str, type_url: str, payload: bytes) -> None:
        if not topic.startswith("/"):
            raise ValueError(f"event topic {topic!r} must start with '/'")
        event = Event(datetime.now(UTC), namespace, topic, type_url, payload)
        for queue in list(self._subscribers):
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:
                log.warning("dropping a slow event subscriber", topic=topic)
                self._subscribers.discard(queue)
                queue.get_nowait()
                queue.put_nowait(None)

    async def subscribe(self, match: Matcher | None = None) -> AsyncIterator[Event]:
        queue: asyncio.Queue[Event | None] = asyncio.Queue(_QUEUE_LIMIT)
        self._subscribers.add(queue)
        try:
            while (event := await queue.get()) is not None:
                if match is None or match(event):
                    yield event
        finally:
            self._subscribers.discard(queue)
