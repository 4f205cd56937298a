"""Publishing containerd's event messages on the exchange."""

from __future__ import annotations

from google.protobuf.message import Message

from linerd.events import Exchange


class Publisher:
    """Encodes an event message as containerd does and hands it to the exchange.

    The type URL is the bare message name (`containerd.events.ImageCreate`): what Go's
    typeurl registry, and so ctr, expects.
    """

    def __init__(self, exchange: Exchange) -> None:
        self.exchange = exchange

    def publish(self, namespace: str, topic: str, event: Message) -> None:
        self.exchange.publish(
            namespace, topic, event.DESCRIPTOR.full_name, event.SerializeToString()
        )
