"""Port-forward over WebSocket, as kubelet's streaming server serves the same URL.

The ports are fixed when the session opens: those of the CRI PortForwardRequest (kubelet's
streaming server and containerd's take them from there) or, for a request that names none,
the `ports` query parameter (repeatable, each a comma-separated list). Each port gets two
channels, 2i for data (both ways) and 2i+1 for errors (server to client), over the channel
framing of `channels.py` (`v4.channel.k8s.io`, `v4.base64.channel.k8s.io`, or no
subprotocol for binary). The server's first message on each of the two channels is the port,
two bytes little endian. Each port is one TCP connection into the pod; a failure is text on
its error channel. The session ends when every port's connection has ended (or the client
closed the WebSocket): v4 has no way to half-close a channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Sequence

from linerd.cri.streaming import channels, websocket
from linerd.cri.streaming.portforward import CLIENT_GRACE, dial
from linerd.cri.streaming.spdyconn import CHUNK, ConnectionClosed
from linerd.cri.streaming.wsconn import Sender
from linerd.errdefs import InvalidArgument, LinerError

PROTOCOLS = (
    channels.ChannelProtocol("v4.channel.k8s.io", base64=False, version=4),
    channels.ChannelProtocol("v4.base64.channel.k8s.io", base64=True, version=4),
)
PORTS_PARAMETER = "ports"
INBOUND_QUEUE = 4  # client messages per port waiting for the pod's socket


def ports_of(requested: Sequence[int], query: dict[str, list[str]]) -> list[int]:
    """The session's ports: the CRI request's, else the query's; InvalidArgument if none or
    one is not a port."""
    if requested:
        for port in requested:
            if not 0 < port < 65536:
                raise InvalidArgument(f"port {port} is not a valid port")
        return list(requested)
    values = query.get(PORTS_PARAMETER)
    if not values:
        raise InvalidArgument(f'query parameter "{PORTS_PARAMETER}" is required')
    ports = []
    for value in values:
        if not value:
            raise InvalidArgument(f'query parameter "{PORTS_PARAMETER}" cannot be empty')
        for item in value.split(","):
            if not item.isdigit() or not 0 < int(item) < 65536:
                raise InvalidArgument(f"unable to parse {value!r} as a port")
            ports.append(int(item))
    return ports


async def serve(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    protocol: channels.ChannelProtocol,
    ports: Sequence[int],
    netns_path: str | None,
) -> None:
    """Serve one WebSocket port-forward session (the 101 already sent) until it ends."""
    codec = channels.ChannelCodec(protocol, channels=2 * len(ports))
    conn = Sender(writer)
    inbound: list[asyncio.Queue[bytes]] = [asyncio.Queue(INBOUND_QUEUE) for _ in ports]
    reading = asyncio.create_task(_read(reader, conn, codec, inbound))
    forwards: list[asyncio.Task[None]] = []
    try:
        for index, port in enumerate(ports):
            prefix = struct.pack("<H", port)
            await conn.send(codec.encode(2 * index, prefix))
            await conn.send(codec.encode(2 * index + 1, prefix))
        forwards = [
            asyncio.create_task(_forward(conn, codec, 2 * i, port, inbound[i], netns_path))
            for i, port in enumerate(ports)
        ]
        everything = asyncio.ensure_future(asyncio.gather(*forwards, return_exceptions=True))
        await asyncio.wait({everything, reading}, return_when=asyncio.FIRST_COMPLETED)
        if everything.done():
            await conn.send(websocket.encode_close(websocket.CloseCode.NORMAL))
        else:
            everything.cancel()
    except ConnectionClosed:
        pass
    finally:
        conn.closed.set()
        for task in [*forwards, reading]:
            task.cancel()
        for task in [*forwards, reading]:
            with contextlib.suppress(BaseException):
                await task
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def _forward(
    conn: Sender,
    codec: channels.ChannelCodec,
    data_channel: int,
    port: int,
    inbound: asyncio.Queue[bytes],
    netns_path: str | None,
) -> None:
    try:
        backend_r, backend_w = await dial(netns_path, port)
    except (OSError, LinerError) as e:
        message = f"error forwarding port {port} to pod: {e}"
        with contextlib.suppress(ConnectionClosed):
            await conn.send(codec.encode(data_channel + 1, message.encode()))
        return

    async def to_backend() -> None:
        while chunk := await inbound.get():
            backend_w.write(chunk)
            await backend_w.drain()
        if backend_w.can_write_eof():
            backend_w.write_eof()

    async def to_client() -> None:
        while chunk := await backend_r.read(CHUNK):
            await conn.send(codec.encode(data_channel, chunk))

    up = asyncio.create_task(to_backend())
    down = asyncio.create_task(to_client())
    try:
        done, _ = await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        if down in done:
            # The pod's side ended: what the client still sends may take a moment (as SPDY).
            await asyncio.wait({up}, timeout=CLIENT_GRACE)
        else:
            await asyncio.wait({down})
    finally:
        up.cancel()
        down.cancel()
        for task in (up, down):
            with contextlib.suppress(BaseException):
                await task
        backend_w.close()
        with contextlib.suppress(Exception):
            await backend_w.wait_closed()


async def _read(
    reader: asyncio.StreamReader,
    conn: Sender,
    codec: channels.ChannelCodec,
    inbound: list[asyncio.Queue[bytes]],
) -> None:
    """The client's messages to the ports' queues (data channels only; what the client
    writes on an error channel is dropped, as kubelet's write-only channel does)."""
    decoder = websocket.FrameDecoder()
    try:
        while data := await reader.read(1 << 16):
            decoder.feed(data)
            for event in decoder.events():
                match event:
                    case websocket.Message():
                        item = codec.decode(event)
                        if (
                            isinstance(item, channels.ChannelData)
                            and item.channel % 2 == 0
                            and item.data
                        ):
                            await inbound[item.channel // 2].put(item.data)
                    case websocket.Ping(payload):
                        await conn.send(websocket.encode_frame(websocket.Opcode.PONG, payload))
                    case websocket.Close():
                        return
    except (websocket.WebSocketError, channels.ChannelError) as e:
        code = getattr(e, "code", websocket.CloseCode.PROTOCOL_ERROR)
        with contextlib.suppress(ConnectionClosed):
            await conn.send(websocket.encode_close(code, str(e)))
    except (ConnectionError, OSError, ConnectionClosed):
        pass
    finally:
        for queue in inbound:
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(b"")
