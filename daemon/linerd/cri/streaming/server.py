"""The streaming server: the HTTP/1.1 endpoint behind the URLs that Exec, Attach and
PortForward answer, as containerd's (`http://<ip:port>/{exec,attach,portforward}/<token>`).

A URL works once, within `ttl` seconds: its token (random, URL-safe) maps to what the CRI
call asked; the first request with it takes it away. An unknown, expired or used token is a
404. The request head is read (bounded), the token resolved, and the connection handed to
the session the token stands for, which decides the upgrade and speaks from there on.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import structlog

from linerd.cri.streaming import upgrade

log = structlog.get_logger("linerd.cri.streaming")

KINDS = ("exec", "attach", "portforward")
TOKEN_TTL = 60.0
MAX_HEAD = 16 << 10
HEAD_TIMEOUT = 30.0

Headers = list[tuple[str, str]]


@dataclass(frozen=True, slots=True)
class Request:
    """A request's head as the session sees it."""

    method: str
    target: str  # the request target: path and query
    headers: Headers

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.target).query, keep_blank_values=True)


# (request, reader, writer) -> None: serves an accepted request to its end.
Session = Callable[[Request, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class _Entry:
    kind: str
    session: Session
    expires: float


class TokenCache:
    """Single-use tokens that expire. `clock` is injectable for the tests."""

    def __init__(self, ttl: float = TOKEN_TTL, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self._clock = clock
        self._entries: dict[str, _Entry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def insert(self, kind: str, session: Session) -> str:
        self._expire()
        while True:
            token = secrets.token_urlsafe(12)  # 16 characters of base64url
            if token not in self._entries:
                break
        self._entries[token] = _Entry(kind, session, self._clock() + self.ttl)
        return token

    def consume(self, kind: str, token: str) -> Session | None:
        """The session for `token` if it is live and for `kind`; the token is gone after."""
        self._expire()
        entry = self._entries.pop(token, None)
        if entry is None or entry.kind != kind:
            return None
        return entry.session

    def _expire(self) -> None:
        now = self._clock()
        for token in [t for t, e in self._entries.items() if e.expires <= now]:
            del self._entries[token]


class StreamServer:
    def __init__(self, address: str = "127.0.0.1", port: int = 0, ttl: float = TOKEN_TTL) -> None:
        self.address = address or "127.0.0.1"
        self.port = port
        self.tokens = TokenCache(ttl)
        self._server: asyncio.Server | None = None
        self._lock = asyncio.Lock()
        self._connections: set[asyncio.Task[Any]] = set()

    @property
    def started(self) -> bool:
        return self._server is not None

    async def start(self) -> None:
        async with self._lock:
            if self._server is not None:
                return
            self._server = await asyncio.start_server(
                self._on_connection, self.address, self.port, limit=MAX_HEAD
            )
            self.port = self._server.sockets[0].getsockname()[1]
            log.info("streaming server listening", address=self.address, port=self.port)

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for task in list(self._connections):
            task.cancel()
        for task in list(self._connections):
            with contextlib.suppress(BaseException):
                await task
        with contextlib.suppress(Exception):
            await server.wait_closed()

    async def idle(self) -> None:
        """Until no connection is being served (every session ended and cleaned up)."""
        while self._connections:
            await asyncio.wait(set(self._connections))

    def base_url(self) -> str:
        host = self.address
        if host in ("0.0.0.0", "::", ""):
            host = socket.gethostname()  # a wildcard is no address a client can dial
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    async def url(self, kind: str, session: Session) -> str:
        """A fresh URL for `session` (starting the server on first use)."""
        if kind not in KINDS:
            raise ValueError(kind)
        await self.start()
        return f"{self.base_url()}/{kind}/{self.tokens.insert(kind, session)}"

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("streaming connection failed")
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
        except (asyncio.LimitOverrunError, ValueError):
            await _respond(writer, 431, "request head too large")
            return
        except TimeoutError:
            return
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            await _respond(writer, 400, "malformed request line")
            return
        method, target = parts[0], parts[1]
        headers: Headers = []
        for line in lines[1:]:
            if not line:
                continue
            name, sep, value = line.partition(":")
            if not sep:
                await _respond(writer, 400, "malformed header")
                return
            headers.append((name.strip(), value.strip()))
        path = urlsplit(target).path.strip("/").split("/")
        session = None
        if len(path) == 2 and path[0] in KINDS:
            session = self.tokens.consume(path[0], path[1])
        if session is None:
            await _respond(writer, 404, "not found")
            return
        await session(Request(method, target, headers), reader, writer)


async def _respond(writer: asyncio.StreamWriter, status: int, message: str) -> None:
    writer.write(upgrade.Response(status, (), (message + "\n").encode()).head())
    with contextlib.suppress(ConnectionError, OSError):
        await writer.drain()
