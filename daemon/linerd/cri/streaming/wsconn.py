"""Remote command over an upgraded WebSocket connection (Kubernetes' channel protocols).

The frames are `websocket.py`'s, the channels `channels.py`'s. Every message the server
sends waits for the socket to drain; inbound stdin goes through a bounded queue, so the read
loop (and so the client, through TCP) waits for a slow process.
"""

from __future__ import annotations

import asyncio
import contextlib

from linerd.cri.streaming import channels, websocket
from linerd.cri.streaming.remotecommand import Options, ResizeParser, Runner, Streams, status
from linerd.cri.streaming.spdyconn import CHUNK, ConnectionClosed


class Sender:
    """Writes whole frames, each awaited until the socket took it; `closed` once it failed."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self.closed = asyncio.Event()

    async def send(self, raw: bytes) -> None:
        if self.closed.is_set():
            raise ConnectionClosed("connection closed")
        self._writer.write(raw)
        try:
            await self._writer.drain()
        except (ConnectionError, OSError) as e:
            self.closed.set()
            raise ConnectionClosed(str(e)) from e


async def serve_websocket(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    protocol: channels.ChannelProtocol,
    options: Options,
    run: Runner,
) -> None:
    codec = channels.ChannelCodec(protocol)
    conn = Sender(writer)

    async def write(channel: int, data: bytes) -> None:
        if options.tty:
            channel = channels.STDOUT
        if (channel == channels.STDOUT and not options.stdout) or (
            channel == channels.STDERR and not options.stderr
        ):
            return
        view = memoryview(data)
        for start in range(0, len(view), CHUNK):
            await conn.send(codec.encode(channel, bytes(view[start : start + CHUNK])))

    session = Streams(options, write)
    if options.stdin:
        session.stdin = asyncio.Queue(4)
    if options.tty:
        session.resize = asyncio.Queue(4)
    reading = asyncio.create_task(_read(reader, conn, codec, session))
    try:
        writable = [channels.ERROR]
        if options.stdout:
            writable.append(channels.STDOUT)
        if options.stderr and not options.tty:
            writable.append(channels.STDERR)
        await conn.send(codec.opening(writable))
        result = await run(session)
        await conn.send(codec.encode(channels.ERROR, status(protocol.version, result)))
        await conn.send(websocket.encode_close(websocket.CloseCode.NORMAL))
    except ConnectionClosed:
        pass
    finally:
        conn.closed.set()
        reading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reading
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def _read(
    reader: asyncio.StreamReader,
    conn: Sender,
    codec: channels.ChannelCodec,
    session: Streams,
) -> None:
    decoder = websocket.FrameDecoder()
    resize = ResizeParser()
    try:
        while data := await reader.read(1 << 16):
            decoder.feed(data)
            for event in decoder.events():
                match event:
                    case websocket.Message():
                        item = codec.decode(event)
                        if isinstance(item, channels.ChannelClosed):
                            if item.channel == channels.STDIN and session.stdin is not None:
                                await session.stdin.put(b"")
                        elif item is None:
                            continue
                        elif item.channel == channels.STDIN and session.stdin is not None:
                            if item.data:
                                await session.stdin.put(item.data)
                        elif item.channel == channels.RESIZE and session.resize is not None:
                            for size in resize.feed(item.data):
                                await session.resize.put(size)
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
        session.gone.set()
        if session.stdin is not None:
            with contextlib.suppress(asyncio.QueueFull):
                session.stdin.put_nowait(b"")
