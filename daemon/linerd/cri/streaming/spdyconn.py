"""One SPDY/3.1 connection on asyncio: the frames of `spdy.py` over a socket, as a server.

The client opens every stream (SYN_STREAM); each is accepted at once with a SYN_REPLY and
handed to the session (`accept`). Data a stream's consumer asked for (`SpdyStream.reader`)
goes into a small bounded queue: the read loop waits while it is full, so a slow consumer
stops reading the socket and TCP pushes back on the client. Data nobody asked for is dropped.

No flow control: Kubernetes' peers (moby/spdystream) never send WINDOW_UPDATE, so the server
never waits for one. Writes go straight to the socket and wait for it to drain, so a slow
client holds the writer back instead of growing a buffer.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any

from linerd.cri.streaming import spdy

CHUNK = 32 << 10  # data frames as client-go's (Go's copy buffer)
_QUEUE = 4  # inbound data frames buffered per stream before the read loop waits


class ConnectionClosed(ConnectionError):
    """The client went away (or the session ended): nothing more can be written."""


class SpdyStream:
    def __init__(self, conn: SpdyConnection, stream_id: int, headers: spdy.Headers) -> None:
        self.conn = conn
        self.id = stream_id
        self.headers = {name: value for name, value in headers}
        self._inbound: asyncio.Queue[bytes] | None = None
        self.remote_closed = False  # the client sent FIN (or reset the stream)
        self.local_closed = False  # we sent FIN

    @property
    def kind(self) -> str:
        return self.headers.get("streamtype", "")

    def reader(self) -> asyncio.Queue[bytes]:
        """The stream's inbound data, b"" once the client half-closed it. Ask before data
        arrives (right in `accept`): data that came earlier was dropped."""
        if self._inbound is None:
            self._inbound = asyncio.Queue(_QUEUE)
            if self.remote_closed:
                self._inbound.put_nowait(b"")
        return self._inbound

    async def _deliver(self, data: bytes, fin: bool) -> None:
        if self.remote_closed:
            return
        if self._inbound is not None and data:
            await self._inbound.put(data)
        if fin:
            self._remote_eof()

    def _remote_eof(self) -> None:
        if self.remote_closed:
            return
        self.remote_closed = True
        if self._inbound is not None:
            try:
                self._inbound.put_nowait(b"")
            except asyncio.QueueFull:
                # The consumer is behind: hand the end over without blocking the read loop.
                self.conn.background(self._inbound.put(b""))

    async def write(self, data: bytes) -> None:
        """Send `data` in frames of at most CHUNK bytes, each once the socket took the last."""
        if self.local_closed:
            raise ConnectionClosed(f"stream {self.id} is closed")
        view = memoryview(data)
        for start in range(0, len(view), CHUNK):
            await self.conn.send(spdy.DataFrame(self.id, bytes(view[start : start + CHUNK])))

    async def close(self, data: bytes = b"") -> None:
        """Half-close: `data` (if any) with FIN, else an empty DATA frame with FIN. Once."""
        if self.local_closed:
            return
        if len(data) > CHUNK:
            await self.write(data[:-CHUNK])
            data = data[-CHUNK:]
        self.local_closed = True
        await self.conn.send(spdy.DataFrame(self.id, data, spdy.FLAG_FIN))

    async def reset(self, status: spdy.RstStatus = spdy.RstStatus.CANCEL) -> None:
        self.local_closed = True
        self._remote_eof()
        await self.conn.send(spdy.RstStream(self.id, status))


class SpdyConnection:
    """Serve one upgraded connection: `run()` reads frames until the client leaves."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        accept: Callable[[SpdyStream], None],
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._accept = accept
        self._encoder = spdy.FrameEncoder()
        self._decoder = spdy.FrameDecoder()
        self.streams: dict[int, SpdyStream] = {}
        self._last_id = 0
        self.closed = asyncio.Event()  # the socket is gone or the session ended it
        self._background: set[asyncio.Future[Any]] = set()

    def background(self, work: Coroutine[Any, Any, Any]) -> None:
        """Run `work` beside the read loop (kept referenced until it is done)."""
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def send(self, frame: spdy.Frame) -> None:
        if self.closed.is_set():
            raise ConnectionClosed("connection closed")
        # Encode and write in one step: header blocks share one zlib stream, in send order.
        self._writer.write(self._encoder.encode(frame))
        try:
            await self._writer.drain()
        except (ConnectionError, OSError) as e:
            self.closed.set()
            raise ConnectionClosed(str(e)) from e

    async def run(self) -> None:
        try:
            while not self.closed.is_set():
                data = await self._reader.read(1 << 16)
                if not data:
                    break
                self._decoder.feed(data)
                while True:
                    try:
                        frame = self._decoder.next_frame()
                    except spdy.StreamError as e:
                        await self.send(spdy.RstStream(e.stream_id, e.status))
                        continue
                    if frame is None:
                        break
                    await self._handle(frame)
        except spdy.SessionError as e:
            with contextlib.suppress(ConnectionClosed):
                await self.send(spdy.GoAway(self._last_id, e.status))
        except (ConnectionError, OSError, ConnectionClosed):
            pass
        finally:
            self._end()

    def _end(self) -> None:
        self.closed.set()
        for stream in self.streams.values():
            stream._remote_eof()

    async def _handle(self, frame: spdy.Frame) -> None:
        match frame:
            case spdy.SynStream(stream_id, headers, flags=flags):
                if stream_id in self.streams or stream_id <= self._last_id or stream_id % 2 == 0:
                    await self.send(spdy.RstStream(stream_id, spdy.RstStatus.PROTOCOL_ERROR))
                    return
                self._last_id = stream_id
                stream = SpdyStream(self, stream_id, headers)
                self.streams[stream_id] = stream
                await self.send(spdy.SynReply(stream_id))
                if flags & spdy.FLAG_FIN:
                    stream._remote_eof()
                self._accept(stream)
            case spdy.DataFrame(stream_id, data, flags):
                found = self.streams.get(stream_id)
                if found is None:
                    await self.send(spdy.RstStream(stream_id, spdy.RstStatus.INVALID_STREAM))
                    return
                await found._deliver(data, bool(flags & spdy.FLAG_FIN))
            case spdy.HeadersFrame(stream_id, flags=flags):
                found = self.streams.get(stream_id)
                if found is not None and flags & spdy.FLAG_FIN:
                    found._remote_eof()
            case spdy.RstStream(stream_id):
                found = self.streams.get(stream_id)
                if found is not None:
                    found.local_closed = True
                    found._remote_eof()
            case spdy.Ping(ping_id):
                if ping_id % 2 == 1:  # the client's: echo it (ours would be even)
                    await self.send(frame)
            case spdy.GoAway():
                self.closed.set()
            case _:
                pass  # SETTINGS, WINDOW_UPDATE, SYN_REPLY, unknown types: nothing to do

    async def close(self) -> None:
        """End the session: GOAWAY, then close the socket."""
        if not self.closed.is_set():
            with contextlib.suppress(ConnectionClosed):
                await self.send(spdy.GoAway(self._last_id))
        self.closed.set()
        self._writer.close()
        with contextlib.suppress(Exception):
            await self._writer.wait_closed()
