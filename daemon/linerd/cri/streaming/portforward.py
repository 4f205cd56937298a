"""Port-forward over SPDY (portforward.k8s.io): per forwarded connection the client opens an
`error` stream and a `data` stream carrying the same `port` and `requestid` headers; each pair
becomes one TCP connection to localhost:<port> inside the pod's network namespace (the
host's for a host-network pod). Many pairs share one session, each piped on its own.

Failures go on the pair's error stream as text (client-go then drops the whole session, as
with kubelet and containerd).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from pathlib import Path

import structlog

from linerd.cri import netns
from linerd.cri.streaming.spdyconn import CHUNK, ConnectionClosed, SpdyConnection, SpdyStream
from linerd.errdefs import LinerError

log = structlog.get_logger("linerd.cri.streaming")

CLIENT_GRACE = 1.0  # after the pod's side ended, how long the client's may still take


async def dial(
    netns_path: str | None, port: int
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TCP connection to localhost:`port` in the namespace (IPv4, then IPv6)."""
    loop = asyncio.get_running_loop()
    errors = []
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        if netns_path:
            sock = await netns.asocket_in(Path(netns_path), family, socket.SOCK_STREAM)
        else:
            sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, (host, port))
        except OSError as e:
            sock.close()
            errors.append(f"{host}: {e.strerror or e}")
            continue
        return await asyncio.open_connection(sock=sock)
    raise ConnectionRefusedError(f"dial localhost:{port}: {'; '.join(errors)}")


class _Pair:
    def __init__(self) -> None:
        self.error: SpdyStream | None = None
        self.data: SpdyStream | None = None
        self.port = 0


async def serve(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, netns_path: str | None
) -> None:
    """Serve one port-forward session until the client leaves."""
    pairs: dict[str, _Pair] = {}
    tasks: set[asyncio.Task[None]] = set()

    def accept(stream: SpdyStream) -> None:
        kind = stream.kind
        request_id = stream.headers.get("requestid", "")
        if kind == "data":
            stream.reader()
        if kind not in ("error", "data"):
            stream.conn.background(stream.reset())
            return
        pair = pairs.setdefault(request_id, _Pair())
        setattr(pair, kind, stream)
        if pair.error is not None and pair.data is not None:
            del pairs[request_id]
            task = asyncio.create_task(_forward(pair.error, pair.data, netns_path))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    conn = SpdyConnection(reader, writer, accept)
    try:
        await conn.run()
    finally:
        for task in list(tasks):
            task.cancel()
        for task in list(tasks):
            with contextlib.suppress(BaseException):
                await task
        await conn.close()


async def _forward(error: SpdyStream, data: SpdyStream, netns_path: str | None) -> None:
    try:
        port = int(data.headers.get("port", ""))
        if not 0 < port < 65536:
            raise ValueError
    except ValueError:
        with contextlib.suppress(ConnectionClosed):
            await error.close(f"invalid port {data.headers.get('port')!r}".encode())
        return
    try:
        backend_r, backend_w = await dial(netns_path, port)
    except (OSError, LinerError) as e:
        message = f"an error occurred forwarding {port} -> {port}: {e}"
        with contextlib.suppress(ConnectionClosed):
            await error.close(message.encode())
        return
    inbound = data.reader()

    async def to_backend() -> None:
        while chunk := await inbound.get():
            backend_w.write(chunk)
            await backend_w.drain()
        if backend_w.can_write_eof():
            backend_w.write_eof()

    async def to_client() -> None:
        while chunk := await backend_r.read(CHUNK):
            await data.write(chunk)
        await data.close()

    up = asyncio.create_task(to_backend())
    down = asyncio.create_task(to_client())
    try:
        done, _ = await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        if down in done:
            # The server is done: the client closes its side once it has seen ours end, and
            # client-go closes its local connection only after the error stream ends, so
            # waiting for it without bound could wait forever (containerd waits a second).
            await asyncio.wait({up}, timeout=CLIENT_GRACE)
        else:
            # The client half-closed: the server answers, then ends its side.
            await asyncio.wait({down})
        await error.close()
    except ConnectionClosed:
        pass
    finally:
        up.cancel()
        down.cancel()
        for task in (up, down):
            with contextlib.suppress(BaseException):
                await task
        backend_w.close()
        with contextlib.suppress(Exception):
            await backend_w.wait_closed()
