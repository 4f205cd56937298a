"""Kubernetes' WebSocket channel protocol for exec and attach, sans-IO.

Over WebSocket, remotecommand multiplexes its streams into messages that start with the
channel they belong to (apimachinery `wsstream`): 0 stdin, 1 stdout, 2 stderr, 3 error,
4 resize. The binary protocols put the channel in the first byte and the data after it;
the base64 ones send text: the channel as an ASCII digit, then the data in base64.
v5.channel.k8s.io adds one signal: the two bytes 255, <channel> half-close that channel
(the client's way to close stdin). An empty message carries nothing and is skipped.

This module negotiates the subprotocol and turns channel data into WebSocket messages and
back; the WebSocket frames themselves are `websocket.py`'s.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable
from dataclasses import dataclass

from linerd import errdefs
from linerd.cri.streaming import websocket

STDIN = 0
STDOUT = 1
STDERR = 2
ERROR = 3
RESIZE = 4
CLOSE = 255  # v5: the signal byte that precedes the channel to half-close
CHANNELS = 5


@dataclass(frozen=True, slots=True)
class ChannelProtocol:
    name: str
    base64: bool  # text messages, data in base64
    version: int  # 1 for the unversioned protocols; 4 adds the Status on ERROR; 5 adds CLOSE

    @property
    def supports_close(self) -> bool:
        return self.version >= 5


# In the order this server prefers them; the client's order decides (see `negotiate`).
REMOTECOMMAND_PROTOCOLS = (
    ChannelProtocol("v5.channel.k8s.io", base64=False, version=5),
    ChannelProtocol("v4.channel.k8s.io", base64=False, version=4),
    ChannelProtocol("v4.base64.channel.k8s.io", base64=True, version=4),
    ChannelProtocol("channel.k8s.io", base64=False, version=1),
    ChannelProtocol("base64.channel.k8s.io", base64=True, version=1),
)
# A client that names no subprotocol gets the unversioned binary one (wsstream's "").
NO_PROTOCOL = ChannelProtocol("", base64=False, version=1)


def offered_protocols(header_values: Iterable[str]) -> list[str]:
    """The Sec-WebSocket-Protocol values of a request, in order (each may be a list)."""
    return [p.strip() for value in header_values for p in value.split(",") if p.strip()]


def negotiate(
    offered: Iterable[str], supported: Iterable[ChannelProtocol] = REMOTECOMMAND_PROTOCOLS
) -> ChannelProtocol | None:
    """The first protocol the client offered that the server supports; None if the client
    offered some and none fits (the handshake fails); NO_PROTOCOL if it offered none."""
    names = list(offered)
    if not names:
        return NO_PROTOCOL
    by_name = {p.name: p for p in supported}
    for name in names:
        if name in by_name:
            return by_name[name]
    return None


class ChannelError(errdefs.InvalidArgument):
    """A message breaks the channel protocol; the connection ends."""


@dataclass(frozen=True, slots=True)
class ChannelData:
    channel: int
    data: bytes


@dataclass(frozen=True, slots=True)
class ChannelClosed:
    """v5: the client half-closed `channel` (stdin: no more input)."""

    channel: int


@dataclass(frozen=True, slots=True)
class ChannelCodec:
    protocol: ChannelProtocol
    channels: int = CHANNELS

    def encode(self, channel: int, data: bytes) -> bytes:
        """The WebSocket frame carrying `data` on `channel` (the server's, unmasked)."""
        if not 0 <= channel < self.channels:
            raise ValueError(f"channel {channel} out of range")
        if self.protocol.base64:
            text = chr(ord("0") + channel) + base64.b64encode(data).decode("ascii")
            return websocket.encode_message(text)
        return websocket.encode_message(bytes([channel]) + data)

    def encode_close(self, channel: int) -> bytes:
        """v5: the frame half-closing `channel`."""
        if not self.protocol.supports_close:
            raise ValueError(f"{self.protocol.name or 'no protocol'} has no close signal")
        return websocket.encode_message(bytes([CLOSE, channel]))

    def opening(self, writable: Iterable[int]) -> bytes:
        """The empty message on the lowest channel the server writes, sent first to tell the
        client the streams are ready (kubelet and containerd do so)."""
        return self.encode(min(writable), b"")

    def decode(self, message: websocket.Message) -> ChannelData | ChannelClosed | None:
        """A client's message; None for one to skip (empty, or for an unknown channel)."""
        raw = message.data
        if not raw:
            return None
        if self.protocol.supports_close and raw[0] == CLOSE:
            if len(raw) != 2:
                raise ChannelError(f"close signal of {len(raw)} bytes")
            if raw[1] >= self.channels:
                raise ChannelError(f"close of unknown channel {raw[1]}")
            return ChannelClosed(raw[1])
        if self.protocol.base64:
            channel = raw[0] - ord("0")
            try:
                data = base64.b64decode(raw[1:], validate=True)
            except (binascii.Error, ValueError):
                raise ChannelError("channel data is not base64") from None
        else:
            channel, data = raw[0], raw[1:]
        if not 0 <= channel < self.channels:
            return None  # wsstream skips messages for channels it does not have
        return ChannelData(channel, data)
