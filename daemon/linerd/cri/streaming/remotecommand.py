"""Remote command (exec, attach) over either transport: the streams a process sees, and the
status that ends a session.

A transport (SPDY streams or WebSocket channels) gives the process side one `Streams`:
stdin and resize events as bounded queues, and an awaited `write` for stdout/stderr that
returns once the client's socket took the data (back-pressure). The process side answers
a `Result`; the transport turns it into what the negotiated protocol reports on the error
stream: v4 (and v5) a metav1.Status in JSON, v1-v3 a text on failure only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from linerd.cri.streaming import channels
from linerd.cri.streaming.spdyconn import ConnectionClosed, SpdyConnection, SpdyStream

STDOUT = channels.STDOUT
STDERR = channels.STDERR
STREAM_WAIT = 30.0  # how long the client has to create its streams (kubelet's value)

# SPDY remotecommand protocol names and the version they stand for.
SPDY_VERSIONS = {
    "v4.channel.k8s.io": 4,
    "v3.channel.k8s.io": 3,
    "v2.channel.k8s.io": 2,
    "channel.k8s.io": 1,
}


@dataclass(frozen=True, slots=True)
class Options:
    """What the CRI request asked for."""

    stdin: bool
    stdout: bool
    stderr: bool
    tty: bool


@dataclass(frozen=True, slots=True)
class Result:
    """How a session ended: an exit code (exec), or an error message (exit_code is None)."""

    exit_code: int | None = 0
    error: str = ""
    command: tuple[str, ...] = ()


@dataclass
class Streams:
    options: Options
    write: Callable[[int, bytes], Awaitable[None]]  # (STDOUT|STDERR, data)
    stdin: asyncio.Queue[bytes] | None = None  # b"" = the client closed stdin
    resize: asyncio.Queue[tuple[int, int]] | None = None  # (width, height)
    gone: asyncio.Event = field(default_factory=asyncio.Event)  # the client disconnected


def status(version: int, result: Result) -> bytes:
    """The error stream's content for `result` under protocol `version` (5 reports as 4)."""
    if result.exit_code == 0 and not result.error:
        return b'{"metadata":{},"status":"Success"}' if version >= 4 else b""
    if result.exit_code is not None and not result.error:
        # kubelet's wording (pkg/kubelet/cri/streaming/remotecommand): the code in the cause.
        message = f"command terminated with non-zero exit code: exit status {result.exit_code}"
        if version < 4:
            return message.encode()
        doc = {
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": str(result.exit_code)}]},
        }
        return json.dumps(doc, separators=(",", ":")).encode()
    if version < 4:
        return result.error.encode()
    doc = {
        "metadata": {},
        "status": "Failure",
        "message": result.error,
        "reason": "InternalError",
        "details": {"causes": [{"message": result.error}]},
        "code": 500,
    }
    return json.dumps(doc, separators=(",", ":")).encode()


class ResizeParser:
    """Consecutive JSON objects `{"Width": w, "Height": h}` (any split) to sizes."""

    def __init__(self) -> None:
        self._buffer = ""
        self._decoder = json.JSONDecoder()

    def feed(self, data: bytes) -> list[tuple[int, int]]:
        self._buffer += data.decode("utf-8", "replace")
        sizes = []
        while True:
            text = self._buffer.lstrip()
            if not text:
                self._buffer = ""
                return sizes
            try:
                obj, end = self._decoder.raw_decode(text)
            except ValueError:
                if len(text) > 4096:  # garbage, not a partial object
                    self._buffer = ""
                else:
                    self._buffer = text
                return sizes
            self._buffer = text[end:]
            if isinstance(obj, dict):
                try:
                    width, height = int(obj.get("Width", 0)), int(obj.get("Height", 0))
                except (TypeError, ValueError):
                    continue
                if width > 0 and height > 0:
                    sizes.append((width, height))


Runner = Callable[[Streams], Awaitable[Result]]


async def _pump_resize(source: asyncio.Queue[bytes], sink: asyncio.Queue[tuple[int, int]]) -> None:
    parser = ResizeParser()
    while data := await source.get():
        for size in parser.feed(data):
            await sink.put(size)


async def serve_spdy(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    protocol: str,
    options: Options,
    run: Runner,
) -> None:
    """Run a remotecommand session on an upgraded SPDY connection (kubelet's order: wait for
    the client's streams, run, FIN the outputs, write the status, close)."""
    version = SPDY_VERSIONS.get(protocol, 1)
    wanted = {"error"}
    if options.stdin:
        wanted.add("stdin")
    if options.stdout:
        wanted.add("stdout")
    if options.stderr and not options.tty:
        wanted.add("stderr")
    if options.tty and version >= 3:
        wanted.add("resize")
    streams: dict[str, SpdyStream] = {}
    complete = asyncio.Event()

    def accept(stream: SpdyStream) -> None:
        kind = stream.kind
        if kind in ("stdin", "resize"):
            stream.reader()
        if kind in wanted and kind not in streams:
            streams[kind] = stream
        if wanted <= streams.keys():
            complete.set()

    conn = SpdyConnection(reader, writer, accept)
    reading = asyncio.create_task(conn.run())
    pumps: list[asyncio.Task[None]] = []
    try:
        waiter = asyncio.create_task(complete.wait())
        closed = asyncio.create_task(conn.closed.wait())
        await asyncio.wait(
            {waiter, closed}, timeout=STREAM_WAIT, return_when=asyncio.FIRST_COMPLETED
        )
        waiter.cancel()
        closed.cancel()
        if not complete.is_set():
            return  # the client left or never created its streams

        async def write(channel: int, data: bytes) -> None:
            name = "stdout" if channel == STDOUT else "stderr"
            target = streams.get(name) or (streams.get("stdout") if options.tty else None)
            if target is not None and data:
                await target.write(data)

        session = Streams(options, write)
        if "stdin" in streams:
            session.stdin = streams["stdin"].reader()
        if "resize" in streams:
            session.resize = asyncio.Queue(4)
            pumps.append(
                asyncio.create_task(_pump_resize(streams["resize"].reader(), session.resize))
            )
        pumps.append(asyncio.create_task(_flag(conn.closed, session.gone)))
        result = await run(session)
        with contextlib.suppress(ConnectionClosed):
            for name in ("stdout", "stderr"):
                if name in streams:
                    await streams[name].close()
            await streams["error"].close(status(version, result))
    except ConnectionClosed:
        pass
    finally:
        for pump in pumps:
            pump.cancel()
        await conn.close()
        reading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reading


async def _flag(source: asyncio.Event, target: asyncio.Event) -> None:
    await source.wait()
    target.set()
