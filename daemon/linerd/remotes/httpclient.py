"""liner's HTTP/1.1 client for registries: asyncio streams, h11 for the framing.

What the registry client needs and nothing more: keep-alive connections per origin (a few
idle ones kept a while), TLS from one shared `ssl.SSLContext` per configuration (created
only when an ``https`` URL is reached), streaming request and response bodies, timeouts on
connect, each read and each write, and the proxies of the environment (``HTTP_PROXY``,
``HTTPS_PROXY``, ``ALL_PROXY``, ``NO_PROXY``, as httpx read them before: plain HTTP goes
to the proxy in absolute form, HTTPS through a ``CONNECT`` tunnel). Redirects are the
caller's (credentials must not follow one to another host). It replaced httpx, whose stack
(httpcore, anyio's backend, h2, idna, certifi, email and urllib.request) stayed ~7 MB in
the daemon after the first pull and cost ~1 ms of CPU per request.

Failures are `TransportError`s (named as httpx's were), the OS or ssl error as their cause.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import ipaddress
import os
import re
import ssl
import time
import urllib.parse
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass

import h11

DEFAULT_PORTS = {"http": 80, "https": 443}
# Read size and the stream's buffer: a blob arrives in chunks up to this size.
READ_SIZE = 256 << 10
# A response's head may be this big (h11's default is 16 KiB; httpcore allowed 100 KiB).
MAX_HEAD = 100 << 10
IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})


class HTTPError(Exception):
    """Any failure of this module."""


class InvalidURL(HTTPError):
    pass


class TransportError(HTTPError):
    """The exchange failed on the wire; the cause says how."""


class ConnectError(TransportError):
    pass


class ProxyError(TransportError):
    pass


class TimeoutException(TransportError):
    pass


class ConnectTimeout(TimeoutException):
    pass


class ReadTimeout(TimeoutException):
    pass


class WriteTimeout(TimeoutException):
    pass


class ReadError(TransportError):
    pass


class WriteError(TransportError):
    pass


class RemoteProtocolError(TransportError):
    pass


_UNSET = object()


class Timeout:
    """Seconds for a connection (with TLS and a proxy's tunnel), each read, each write."""

    __slots__ = ("connect", "read", "write")

    def __init__(
        self,
        timeout: float | None = 30.0,
        *,
        connect: float | object | None = _UNSET,
        read: float | object | None = _UNSET,
        write: float | object | None = _UNSET,
    ) -> None:
        self.connect: float | None = timeout if connect is _UNSET else connect  # type: ignore[assignment]
        self.read: float | None = timeout if read is _UNSET else read  # type: ignore[assignment]
        self.write: float | None = timeout if write is _UNSET else write  # type: ignore[assignment]

    @classmethod
    def of(cls, value: Timeout | float | None) -> Timeout:
        return value if isinstance(value, Timeout) else cls(value)


_HASHED_NAME = re.compile(r"[0-9a-f]{8}\.[0-9]+")


def system_ssl_context(capath: str | None = None) -> ssl.SSLContext:
    """A new client context trusting the system's store, verification and host names on.

    The store is the directory OpenSSL hashes (/etc/ssl/certs: the CAs containerd and curl
    trust, which `update-ca-certificates` maintains, with its ``<hash>.0`` links), looked up
    per issuer at a handshake: loading its bundle file instead parses all ~150 CAs into every
    context (~0.9 MB each). ``SSL_CERT_FILE`` or ``SSL_CERT_DIR`` in the environment, or a
    directory without hash links, get `ssl.create_default_context`'s reading."""
    paths = ssl.get_default_verify_paths()
    capath = capath or paths.capath
    if (
        os.environ.get(paths.openssl_cafile_env) is None
        and os.environ.get(paths.openssl_capath_env) is None
        and capath
        and _hashed(capath)
    ):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED, check_hostname
        ctx.load_verify_locations(capath=capath)
        return ctx
    return ssl.create_default_context()


@functools.cache
def _hashed(directory: str) -> bool:
    try:
        with os.scandir(directory) as entries:
            return any(_HASHED_NAME.fullmatch(e.name) for e in entries)
    except OSError:
        return False


@functools.cache
def default_ssl_context() -> ssl.SSLContext:
    """`system_ssl_context`, one per process (registries without a TLS configuration of
    their own, token servers, policy lookasides, HTTPS proxies)."""
    return system_ssl_context()


class Headers:
    """A response's headers: names case-insensitive, values in order."""

    __slots__ = ("raw",)

    def __init__(self, raw: Iterable[tuple[bytes, bytes]]) -> None:
        self.raw = [(bytes(k).lower(), bytes(v)) for k, v in raw]

    def get_list(self, name: str) -> list[str]:
        key = name.lower().encode()
        return [v.decode("latin-1") for k, v in self.raw if k == key]

    def get(self, name: str, default: str | None = None) -> str | None:
        values = self.get_list(name)
        return ", ".join(values) if values else default

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and bool(self.get_list(name))


@dataclass(frozen=True, slots=True)
class _Target:
    scheme: str
    host: str  # lower case, IPv6 without brackets, IDNA-encoded
    port: int
    target: str  # origin-form: path and query

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if DEFAULT_PORTS[self.scheme] == self.port else f"{host}:{self.port}"


def _split(url: str) -> _Target:
    try:
        p = urllib.parse.urlsplit(url)
        port = p.port
    except ValueError as e:
        raise InvalidURL(f"invalid URL {url!r}: {e}") from None
    scheme = p.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise InvalidURL(f"unsupported URL scheme in {url!r}")
    host = p.hostname or ""
    if not host:
        raise InvalidURL(f"no host in URL {url!r}")
    if not host.isascii():
        host = host.encode("idna").decode()
    target = p.path or "/"
    if p.query:
        target += "?" + p.query
    if not target.isascii() or " " in target:
        target = urllib.parse.quote(target, safe="/?&=%:@!$'()*+,;~-._")
    return _Target(scheme, host, port or DEFAULT_PORTS[scheme], target)


# -- proxies from the environment -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Proxy:
    url: str
    scheme: str
    host: str
    port: int
    authorization: str | None  # Proxy-Authorization from the URL's user info

    @classmethod
    def parse(cls, url: str) -> Proxy:
        if "://" not in url:
            url = f"http://{url}"
        p = urllib.parse.urlsplit(url)
        scheme = p.scheme.lower()
        if scheme not in DEFAULT_PORTS or not p.hostname:
            raise ProxyError(f"unsupported proxy URL (scheme {scheme!r}): only http and https")
        auth = None
        if p.username is not None:
            user = urllib.parse.unquote(p.username)
            password = urllib.parse.unquote(p.password or "")
            auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        port = p.port or DEFAULT_PORTS[scheme]
        return cls(f"{scheme}://{p.hostname}:{port}", scheme, p.hostname.lower(), port, auth)


@dataclass(frozen=True, slots=True)
class _NoProxy:
    scheme: str | None
    host: str  # "" with a network
    port: int | None
    subdomains_only: bool = False
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None

    def matches(self, t: _Target) -> bool:
        if self.scheme is not None and self.scheme != t.scheme:
            return False
        if self.port is not None and self.port != t.port:
            return False
        if self.network is not None:
            try:
                return ipaddress.ip_address(t.host) in self.network
            except ValueError:
                return False
        if t.host == self.host:
            return not self.subdomains_only
        return t.host.endswith("." + self.host)


def _no_proxy_rule(entry: str) -> _NoProxy | None:
    scheme: str | None = None
    if "://" in entry:
        scheme, _, entry = entry.partition("://")
        scheme = scheme.lower()
        scheme = None if scheme == "all" else scheme
    entry = entry.strip().rstrip("/").lower()
    if not entry:
        return None
    with contextlib.suppress(ValueError):  # an address or a network: 10.0.0.0/8, ::1
        return _NoProxy(scheme, "", None, network=ipaddress.ip_network(entry, strict=False))
    host, port = entry, None
    if entry.startswith("["):  # [::1]:5000
        host, _, rest = entry[1:].partition("]")
        port = int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else None
        with contextlib.suppress(ValueError):
            return _NoProxy(scheme, "", port, network=ipaddress.ip_network(host))
    elif entry.count(":") == 1:
        name, _, p = entry.partition(":")
        if p.isdigit():
            host, port = name, int(p)
    subdomains_only = host.startswith(".") or host.startswith("*.")
    host = host.lstrip("*").lstrip(".")
    return _NoProxy(scheme, host, port, subdomains_only) if host else None


@dataclass(frozen=True, slots=True)
class Proxies:
    """Which proxy, if any, a URL goes through (httpx's reading of the environment: the
    lower-case variable wins; ``NO_PROXY`` entries are hosts with their subdomains,
    ``.host`` for subdomains only, addresses or networks, optional ``:port``; ``*`` means
    no proxy at all)."""

    http: Proxy | None = None
    https: Proxy | None = None
    no_proxy: tuple[_NoProxy, ...] = ()

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Proxies:
        found: dict[str, str] = {}
        for name, value in environ.items():  # upper case first, lower case overrides
            if value and name.lower().endswith("_proxy") and name != name.lower():
                found[name.lower()[:-6]] = value
        if "REQUEST_METHOD" in environ:  # a CGI's HTTP_PROXY is the client's header
            found.pop("http", None)
        for name, value in environ.items():
            if value and name.endswith("_proxy") and name == name.lower():
                found[name[:-6]] = value
        no_proxy = [e.strip() for e in found.get("no", "").split(",")]
        if "*" in no_proxy:
            return cls()
        everything = found.get("all")
        http = found.get("http") or everything
        https = found.get("https") or everything
        rules = tuple(r for r in map(_no_proxy_rule, no_proxy) if r is not None)
        return cls(
            Proxy.parse(http) if http else None, Proxy.parse(https) if https else None, rules
        )

    def for_target(self, t: _Target) -> Proxy | None:
        proxy = self.https if t.scheme == "https" else self.http
        if proxy is None or any(rule.matches(t) for rule in self.no_proxy):
            return None
        return proxy


# -- connections -------------------------------------------------------------------------


def _direct_length(method: str, event: h11.Response) -> int | None:
    """The Content-Length of a response body that may be read past h11 (`Response._direct`):
    one framed by Content-Length alone, on a connection that stays open after it (HTTP/1.1,
    no `Connection: close`); None otherwise (h11 reads it: chunked, until close, none)."""
    if method == "HEAD" or event.status_code in (204, 304) or event.http_version != b"1.1":
        return None
    length = None
    for name, value in event.headers:  # h11 lower-cases the names, and checked the length
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" or (name == b"connection" and b"close" in value.lower()):
            return None
    return length


class _Connection:
    __slots__ = ("h11", "idle_since", "key", "reader", "received", "requests", "writer")

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, key: tuple[object, ...]
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
        self.key = key
        self.idle_since = 0.0
        self.requests = 0
        self.received = 0  # bytes received for the current request

    def usable(self) -> bool:
        """Still open, nothing unasked-for buffered (a server that closed an idle connection
        shows here as EOF once the loop has seen it)."""
        return (
            self.h11.our_state is h11.IDLE
            and not self.writer.transport.is_closing()
            and not self.reader.at_eof()
            and self.reader.exception() is None
        )

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.transport.abort()


Body = bytes | Callable[[], AsyncIterable[bytes]] | None


class Response:
    """A response whose body streams: read it with `aiter_bytes` or `aread`, then `aclose`
    (which keeps the connection for the next request when the exchange finished)."""

    def __init__(
        self,
        client: HTTPClient,
        conn: _Connection,
        method: str,
        url: str,
        event: h11.Response,
    ) -> None:
        self.status_code = event.status_code
        self.reason_phrase = event.reason.decode("latin-1")
        self.headers = Headers(event.headers)
        self.method = method
        self.url = url
        self._client = client
        self._conn: _Connection | None = conn
        self._consumed = False
        self._length = _direct_length(method, event)

    @property
    def is_closed(self) -> bool:
        return self._conn is None

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        conn = self._conn
        if conn is None:
            if self._consumed:
                return
            raise ReadError("the response was closed before its body was read")
        self._consumed = True
        client = self._client
        remaining = self._length
        h = conn.h11
        while True:
            try:
                event = h.next_event()
                if event is h11.NEED_DATA:
                    if remaining:
                        # What h11 had buffered is out: the rest of a Content-Length body is
                        # read past it (h11 copied each chunk three times more: into its
                        # buffer, out as the Data event, to bytes), and h11 is reset after.
                        async with contextlib.aclosing(self._direct(conn, remaining)) as rest:
                            async for chunk in rest:
                                yield chunk
                        return
                    event = await client._next_event(conn)
            except h11.RemoteProtocolError as e:
                self._drop()
                raise RemoteProtocolError(str(e)) from e
            except BaseException:
                self._drop()
                raise
            if type(event) is h11.Data:
                data = bytes(event.data)
                if remaining is not None:
                    remaining -= len(data)
                yield data
            elif type(event) is h11.EndOfMessage:
                self._release()
                return
            else:  # pragma: no cover - h11 sends only Data and EndOfMessage here
                self._drop()
                raise RemoteProtocolError(f"unexpected {type(event).__name__} in a body")

    async def _direct(self, conn: _Connection, remaining: int) -> AsyncIterator[bytes]:
        """The last `remaining` bytes of the body, read from the stream without h11."""
        client = self._client
        reader = conn.reader
        try:
            while remaining:
                try:
                    async with asyncio.timeout(client.timeout.read):
                        data = await reader.read(min(remaining, READ_SIZE))
                except TimeoutError as e:
                    raise ReadTimeout("waiting for the server timed out") from e
                except OSError as e:
                    raise ReadError(f"reading the response: {e}") from e
                if not data:
                    raise RemoteProtocolError(
                        f"peer closed connection without sending complete message body "
                        f"({remaining} bytes missing)"
                    )
                conn.received += len(data)
                remaining -= len(data)
                yield data
        except BaseException:
            self._drop()
            raise
        # The exchange is complete: a new h11 state machine for the connection's next one
        # (what h11's own start_next_cycle leaves: both sides idle, nothing buffered).
        conn.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
        self._conn = None
        self._client._release(conn, fresh=True)

    async def aread(self) -> bytes:
        return b"".join([chunk async for chunk in self.aiter_bytes()])

    async def aclose(self) -> None:
        """Done with the response: a body that already arrived whole (an empty one, a
        HEAD's, a short error) leaves the connection reusable; anything else closes it."""
        conn = self._conn
        if conn is None:
            return
        try:
            while True:
                event = conn.h11.next_event()
                if event is h11.NEED_DATA or event is h11.PAUSED:
                    self._drop()
                    return
                if type(event) is h11.EndOfMessage:
                    self._release()
                    return
        except h11.RemoteProtocolError:
            self._drop()

    def _release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._client._release(conn)

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


class HTTPClient:
    """Connections kept per origin (and TLS context and proxy), at most ``max_idle`` idle
    ones in all, each at most ``idle_expiry`` seconds. ``ssl_context``: a context, or a
    callable returning the current one (a new context gets new connections), used only
    for HTTPS."""

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext | Callable[[], ssl.SSLContext] | None = None,
        timeout: Timeout | float | None = 30.0,
        headers: Iterable[tuple[str, str]] = (),
        trust_env: bool = True,
        environ: Mapping[str, str] | None = None,
        max_idle: int = 4,
        idle_expiry: float = 30.0,
    ) -> None:
        if ssl_context is None:
            self._ssl: Callable[[], ssl.SSLContext] = default_ssl_context
        elif isinstance(ssl_context, ssl.SSLContext):
            self._ssl = lambda: ssl_context
        else:
            self._ssl = ssl_context
        self.timeout = Timeout.of(timeout)
        self._headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]
        self._default_names = {k.lower() for k, _ in self._headers}
        self.proxies = (
            Proxies.from_environ(os.environ if environ is None else environ)
            if trust_env
            else Proxies()
        )
        self.max_idle = max_idle
        self.idle_expiry = idle_expiry
        self._idle: dict[tuple[object, ...], list[_Connection]] = {}
        self._idle_count = 0
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False
        self.connections_opened = 0  # for tests and metrics

    async def __aenter__(self) -> HTTPClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        idle, self._idle, self._idle_count = self._idle, {}, 0
        for conns in idle.values():
            for conn in conns:
                conn.close()

    async def send(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str] | Iterable[tuple[str, str]] = (),
        body: Body = None,
    ) -> Response:
        """Send one request; the response's head is read, its body streams. ``body``:
        bytes, or a callable making an async iterable of bytes (called again when the
        request is sent again on a fresh connection). A reused connection that turns out
        closed before any answer is replaced once for an idempotent method."""
        if self._closed:
            raise RuntimeError("the HTTP client is closed")
        t = _split(url)
        proxy = self.proxies.for_target(t)
        ctx = self._ssl() if t.scheme == "https" else None
        if proxy is not None and t.scheme == "http":
            # Absolute form through the proxy; one connection to it serves every host.
            key: tuple[object, ...] = ("via", proxy.url)
            target = f"http://{t.authority}{t.target}"
        else:
            key = (t.scheme, t.host, t.port, ctx, proxy.url if proxy else None)
            target = t.target
        hdrs = self._request_headers(t, headers, body, proxy if key[0] == "via" else None)
        request = h11.Request(method=method, target=target, headers=hdrs)
        while True:
            conn = self._checkout(key)
            reused = conn is not None
            if conn is None:
                conn = await self._connect(t, ctx, proxy, key)
            try:
                event = await self._exchange(conn, request, body)
            except TransportError as e:
                conn.close()
                if reused and method in IDEMPOTENT and _nothing_received(conn, e):
                    continue  # a stale keep-alive connection: once more on a new one
                raise
            except BaseException:
                conn.close()
                raise
            return Response(self, conn, method, url, event)

    # -- internals ------------------------------------------------------------------------

    def _request_headers(
        self,
        t: _Target,
        headers: Mapping[str, str] | Iterable[tuple[str, str]],
        body: Body,
        proxy: Proxy | None,
    ) -> list[tuple[bytes, bytes]]:
        given = list(headers.items() if isinstance(headers, Mapping) else headers)
        names = {k.lower() for k, _ in given}
        out = [(b"Host", t.authority.encode())]
        out += [(k, v) for k, v in self._headers if k.decode().lower() not in names]
        out += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in given]
        if body is not None and "content-length" not in names:
            if isinstance(body, bytes | bytearray):
                out.append((b"Content-Length", str(len(body)).encode()))
            elif "transfer-encoding" not in names:
                out.append((b"Transfer-Encoding", b"chunked"))
        if proxy is not None and proxy.authorization:
            out.append((b"Proxy-Authorization", proxy.authorization.encode()))
        return out

    def _checkout(self, key: tuple[object, ...]) -> _Connection | None:
        conns = self._idle.get(key)
        now = time.monotonic()
        while conns:
            conn = conns.pop()
            self._idle_count -= 1
            if not conns:
                del self._idle[key]
            if conn.usable() and now - conn.idle_since < self.idle_expiry:
                return conn
            conn.close()
        return None

    def _release(self, conn: _Connection, *, fresh: bool = False) -> None:
        """Keep `conn` for the next request if its exchange completed; `fresh`: its h11 is
        new (a body read past it), so ready already."""
        h = conn.h11
        if self._closed:
            conn.close()
            return
        if not fresh:
            if h.our_state is not h11.DONE or h.their_state is not h11.DONE:
                conn.close()
                return
            try:
                h.start_next_cycle()
            except h11.LocalProtocolError:
                conn.close()
                return
        if not conn.usable():
            conn.close()
            return
        conn.idle_since = time.monotonic()
        if self._idle_count >= self.max_idle:
            self._evict_oldest()
        self._idle.setdefault(conn.key, []).append(conn)
        self._idle_count += 1
        if self._sweeper is None:
            loop = asyncio.get_running_loop()
            self._sweeper = loop.call_later(self.idle_expiry, self._sweep)

    def _evict_oldest(self) -> None:
        key, conn = min(((k, c[0]) for k, c in self._idle.items()), key=lambda kc: kc[1].idle_since)
        self._idle[key].remove(conn)
        if not self._idle[key]:
            del self._idle[key]
        self._idle_count -= 1
        conn.close()

    def _sweep(self) -> None:
        self._sweeper = None
        now = time.monotonic()
        for key in list(self._idle):
            kept = []
            for conn in self._idle[key]:
                if now - conn.idle_since < self.idle_expiry and conn.usable():
                    kept.append(conn)
                else:
                    conn.close()
            self._idle_count -= len(self._idle[key]) - len(kept)
            if kept:
                self._idle[key] = kept
            else:
                del self._idle[key]
        if self._idle_count:
            oldest = min(c.idle_since for conns in self._idle.values() for c in conns)
            delay = max(oldest + self.idle_expiry - now, 0.05)
            self._sweeper = asyncio.get_running_loop().call_later(delay, self._sweep)

    async def _connect(
        self,
        t: _Target,
        ctx: ssl.SSLContext | None,
        proxy: Proxy | None,
        key: tuple[object, ...],
    ) -> _Connection:
        if proxy is None:
            host, port, first_ctx = t.host, t.port, ctx
        else:  # the proxy first (TLS to it for an https:// proxy), then a tunnel for HTTPS
            host, port = proxy.host, proxy.port
            first_ctx = default_ssl_context() if proxy.scheme == "https" else None
        where = f"{host}:{port}"
        try:
            async with asyncio.timeout(self.timeout.connect):
                reader, writer = await asyncio.open_connection(
                    host,
                    port,
                    ssl=first_ctx,
                    server_hostname=host if first_ctx else None,
                    limit=READ_SIZE,
                )
                if proxy is not None and t.scheme == "https":
                    try:
                        await self._tunnel(reader, writer, t, proxy)
                        assert ctx is not None
                        await writer.start_tls(ctx, server_hostname=t.host)
                    except BaseException:
                        writer.transport.abort()
                        raise
        except TimeoutError as e:
            raise ConnectTimeout(f"connecting to {where} timed out") from e
        except (OSError, ssl.SSLError) as e:
            raise ConnectError(f"connecting to {where}: {e}") from e
        self.connections_opened += 1
        return _Connection(reader, writer, key)

    async def _tunnel(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        t: _Target,
        proxy: Proxy,
    ) -> None:
        authority = f"[{t.host}]:{t.port}" if ":" in t.host else f"{t.host}:{t.port}"
        headers = [(b"Host", authority.encode())]
        if proxy.authorization:
            headers.append((b"Proxy-Authorization", proxy.authorization.encode()))
        h = h11.Connection(h11.CLIENT)
        writer.write(h.send(h11.Request(method="CONNECT", target=authority, headers=headers)))
        writer.write(h.send(h11.EndOfMessage()))
        await writer.drain()
        while True:
            try:
                event = h.next_event()
            except h11.RemoteProtocolError as e:
                raise ProxyError(f"proxy {proxy.host}:{proxy.port}: {e}") from e
            if event is h11.NEED_DATA:
                h.receive_data(await reader.read(READ_SIZE))
                continue
            if type(event) is h11.InformationalResponse:
                continue
            if type(event) is h11.Response:
                if not 200 <= event.status_code < 300:
                    raise ProxyError(
                        f"proxy {proxy.host}:{proxy.port} refused the tunnel to {authority}: "
                        f"HTTP {event.status_code}"
                    )
                data, _closed = h.trailing_data
                if data:
                    raise ProxyError(f"proxy {proxy.host}:{proxy.port} sent data past CONNECT")
                return
            raise ProxyError(f"proxy {proxy.host}:{proxy.port}: unexpected answer to CONNECT")

    async def _exchange(self, conn: _Connection, request: h11.Request, body: Body) -> h11.Response:
        conn.requests += 1
        conn.received = 0
        try:
            await self._send_request(conn, request, body)
        except WriteError:
            # The server may have answered early (a refusal before reading the body) and
            # closed: its answer says more than the broken pipe.
            try:
                return await self._response_head(conn)
            except TransportError:
                pass
            raise
        return await self._response_head(conn)

    async def _response_head(self, conn: _Connection) -> h11.Response:
        while True:
            event = await self._next_event(conn)
            if type(event) is h11.Response:
                return event
            # 1xx (100 Continue, 103 Early Hints): the real answer follows

    async def _send_request(self, conn: _Connection, request: h11.Request, body: Body) -> None:
        h = conn.h11
        try:
            head = h.send(request)
            if body is None:
                conn.writer.write(head + h.send(h11.EndOfMessage()))
            elif isinstance(body, bytes | bytearray):
                data = h.send(h11.Data(data=body)) if body else b""
                conn.writer.write(head + data + h.send(h11.EndOfMessage()))
            else:
                conn.writer.write(head)
                async for chunk in body():
                    if chunk:
                        conn.writer.write(h.send(h11.Data(data=chunk)))
                        await self._drain(conn)
                conn.writer.write(h.send(h11.EndOfMessage()))
        except h11.LocalProtocolError as e:
            raise RemoteProtocolError(f"cannot send the request: {e}") from e
        await self._drain(conn)

    async def _drain(self, conn: _Connection) -> None:
        try:
            async with asyncio.timeout(self.timeout.write):
                await conn.writer.drain()
        except TimeoutError as e:
            raise WriteTimeout("sending the request timed out") from e
        except OSError as e:
            raise WriteError(f"sending the request: {e}") from e

    async def _next_event(self, conn: _Connection) -> object:
        h = conn.h11
        while True:
            try:
                event = h.next_event()
            except h11.RemoteProtocolError as e:
                raise RemoteProtocolError(str(e)) from e
            if event is not h11.NEED_DATA:
                return event
            try:
                async with asyncio.timeout(self.timeout.read):
                    data = await conn.reader.read(READ_SIZE)
            except TimeoutError as e:
                raise ReadTimeout("waiting for the server timed out") from e
            except OSError as e:
                raise ReadError(f"reading the response: {e}") from e
            conn.received += len(data)
            h.receive_data(data)  # b"": the server closed; h11 decides if that ends the body


def _nothing_received(conn: _Connection, e: TransportError) -> bool:
    """Whether ``e`` came before any byte of an answer: the server closed the kept
    connection before (or as) it got our request."""
    return not isinstance(e, TimeoutException) and conn.received == 0
