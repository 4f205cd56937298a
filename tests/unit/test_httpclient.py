"""liner's HTTP/1.1 client against a real socket server speaking raw HTTP.

Each test's server is an asyncio server on 127.0.0.1 whose handler reads requests and writes
exactly the bytes a test wants (chunked bodies, a body ended by close, 1xx answers, a HEAD
with a Content-Length, early answers, connections closed while idle in the pool).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from linerd.remotes import httpclient as http
from linerd.remotes.httpclient import HTTPClient, Proxies, _split

pytestmark = pytest.mark.unit

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@dataclass
class Request:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes
    connection: int  # which accepted connection it came over (0, 1, ...)


Handler = Callable[[Request, asyncio.StreamWriter], Awaitable[bool]]


@dataclass
class Server:
    """Answers each request with ``handler(request, writer)``; the connection stays open
    while the handler returns True."""

    handler: Handler
    requests: list[Request] = field(default_factory=list)
    connections: int = 0
    writers: list[asyncio.StreamWriter] = field(default_factory=list)
    port: int = 0
    _server: asyncio.Server | None = None

    async def __aenter__(self) -> Server:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for w in self.writers:
            w.close()

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        number = self.connections
        self.connections += 1
        self.writers.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if line:
                        k, _, v = line.partition(":")
                        headers[k.strip().lower()] = v.strip()
                body = b""
                if "content-length" in headers:
                    body = await reader.readexactly(int(headers["content-length"]))
                elif headers.get("transfer-encoding") == "chunked":
                    while True:
                        size = int((await reader.readuntil(b"\r\n")).strip(), 16)
                        data = await reader.readexactly(size + 2)
                        if size == 0:
                            break
                        body += data[:-2]
                request = Request(method, target, headers, body, number)
                self.requests.append(request)
                keep = await self.handler(request, writer)
                await writer.drain()
                if not keep:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def reply(status: int, body: bytes = b"", headers: str = "") -> Handler:
    async def handler(request: Request, writer: asyncio.StreamWriter) -> bool:
        writer.write(
            f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\n{headers}\r\n".encode() + body
        )
        return True

    return handler


async def get(client: HTTPClient, url: str, method: str = "GET") -> tuple[int, bytes]:
    resp = await client.send(method, url)
    try:
        return resp.status_code, await resp.aread()
    finally:
        await resp.aclose()


def test_keep_alive_reuses_one_connection() -> None:
    async def main() -> None:
        async with Server(reply(200, b"hello")) as srv, HTTPClient(trust_env=False) as c:
            for _ in range(3):
                assert await get(c, srv.url("/a?b=c")) == (200, b"hello")
            assert srv.connections == 1 and c.connections_opened == 1
            assert [r.target for r in srv.requests] == ["/a?b=c"] * 3
            assert srv.requests[0].headers["host"] == f"127.0.0.1:{srv.port}"

    run(main())


def test_chunked_body() -> None:
    async def handler(request: Request, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for part in (b"abc", b"", b"defgh"):
            if part:
                writer.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
                await writer.drain()
        writer.write(b"0\r\n\r\n")
        return True

    async def main() -> None:
        async with Server(handler) as srv, HTTPClient(trust_env=False) as c:
            assert await get(c, srv.url()) == (200, b"abcdefgh")
            assert await get(c, srv.url()) == (200, b"abcdefgh")
            assert srv.connections == 1

    run(main())


def _in_pieces(body: bytes, headers: str = "") -> Handler:
    """A Content-Length answer whose head goes first and whose body follows in pieces."""

    async def handler(request: Request, writer: asyncio.StreamWriter) -> bool:
        writer.write(f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n{headers}\r\n".encode())
        await writer.drain()
        for start in range(0, len(body), 100_000):
            await asyncio.sleep(0)
            writer.write(body[start : start + 100_000])
            await writer.drain()
        return "close" not in headers

    return handler


def test_a_content_length_body_read_past_h11_is_whole_and_keeps_the_connection() -> None:
    body = os.urandom(1_300_000)  # > READ_SIZE: several reads after what came with the head

    async def main() -> None:
        async with Server(_in_pieces(body)) as srv, HTTPClient(trust_env=False) as c:
            for _ in range(3):
                resp = await c.send("GET", srv.url())
                chunks = [chunk async for chunk in resp.aiter_bytes()]
                assert b"".join(chunks) == body
                assert all(len(chunk) <= http.READ_SIZE for chunk in chunks)
                assert resp.is_closed  # released to the pool
            assert srv.connections == 1 and c.connections_opened == 1

    run(main())


def test_a_body_left_unread_past_h11_drops_the_connection() -> None:
    body = os.urandom(1_300_000)

    async def main() -> None:
        async with Server(_in_pieces(body)) as srv, HTTPClient(trust_env=False) as c:
            resp = await c.send("GET", srv.url())
            async with contextlib.aclosing(resp.aiter_bytes()) as chunks:
                async for _ in chunks:
                    break
            await resp.aclose()
            assert await get(c, srv.url()) == (200, body)
            assert c.connections_opened == 2  # the half-read one was not reused

    run(main())


def test_a_content_length_body_with_connection_close_is_not_reused() -> None:
    body = os.urandom(400_000)

    async def main() -> None:
        closing = _in_pieces(body, "Connection: close\r\n")
        async with Server(closing) as srv, HTTPClient(trust_env=False) as c:
            assert await get(c, srv.url()) == (200, body)
            assert await get(c, srv.url()) == (200, body)
            assert srv.connections == 2

    run(main())


def test_body_ended_by_close_is_read_whole_and_the_connection_not_reused() -> None:
    async def handler(request: Request, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + b"x" * 300_000)
        return False

    async def main() -> None:
        async with Server(handler) as srv, HTTPClient(trust_env=False) as c:
            assert await get(c, srv.url()) == (200, b"x" * 300_000)
            assert await get(c, srv.url()) == (200, b"x" * 300_000)
            assert srv.connections == 2

    run(main())


def test_informational_answers_are_skipped() -> None:
    async def handler(request: Request, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n")
        writer.write(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\nLocation: /u\r\n\r\nok")
        return True

    async def main() -> None:
        async with Server(handler) as srv, HTTPClient(trust_env=False) as c:
            resp = await c.send("PUT", srv.url(), {}, b"data")
            assert resp.status_code == 201 and resp.headers.get("location") == "/u"
            assert await resp.aread() == b"ok"
            await resp.aclose()
            assert srv.requests[0].body == b"data"

    run(main())


def test_head_with_content_length_has_no_body_and_keeps_the_connection() -> None:
    async def handler(request: Request, writer: asyncio.StreamWriter) -> bool:
        assert request.method == "HEAD"
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 12345\r\nDocker-Content-Digest: d\r\n")
        writer.write(b"\r\n")
        return True

    async def main() -> None:
        async with Server(handler) as srv, HTTPClient(trust_env=False) as c:
            for _ in range(2):
                resp = await c.send("HEAD", srv.url())
                await resp.aclose()  # without reading: nothing to read
                assert resp.headers.get("Content-Length") == "12345"
            assert srv.connections == 1

    run(main())


def test_an_unread_short_answer_already_received_keeps_the_connection() -> None:
    async def main() -> None:
        handler = reply(401, b'{"errors":[]}', 'WWW-Authenticate: Basic realm="r"\r\n')
        async with Server(handler) as srv, HTTPClient(trust_env=False) as c:
            for _ in range(2):
                resp = await c.send("GET", srv.url())
                # the 401's small body is in the buffer by the time the head is parsed
                await asyncio.sleep(0)
                await resp.aclose()
                assert resp.headers.get_list("www-authenticate") == ['Basic realm="r"']
            assert c.connections_opened <= 2

    run(main())


def test_a_pooled_connection_the_server_closed_is_replaced() -> None:
    async def handler(request: Request, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        return True

    async def main() -> None:
        async with Server(handler) as srv, HTTPClient(trust_env=False) as c:
            assert await get(c, srv.url()) == (200, b"ok")
            # The server closes the idle connection (as a registry's idle timeout does).
            srv.writers[0].close()
            await srv.writers[0].wait_closed()
            assert await get(c, srv.url()) == (200, b"ok")
            assert srv.connections == 2

    run(main())


def test_a_pooled_connection_closed_unseen_is_retried_for_idempotent_requests(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A stale connection that looks usable at checkout: the failure shows only on use.
    monkeypatch.setattr(http._Connection, "usable", lambda self: True)

    async def main() -> None:
        async with Server(reply(200, b"ok")) as srv, HTTPClient(trust_env=False) as c:
            assert await get(c, srv.url()) == (200, b"ok")
            srv.writers[0].close()
            await srv.writers[0].wait_closed()
            assert await get(c, srv.url()) == (200, b"ok")
            assert srv.connections == 2

    run(main())


def test_a_post_on_a_pooled_connection_closed_unseen_is_not_sent_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(http._Connection, "usable", lambda self: True)

    async def main() -> None:
        async with Server(reply(202)) as srv, HTTPClient(trust_env=False) as c:
            assert await get(c, srv.url()) == (202, b"")
            srv.writers[0].close()
            await srv.writers[0].wait_closed()
            with pytest.raises(http.TransportError):
                await c.send("POST", srv.url(), {}, b"x")
            assert srv.connections == 1
            assert await get(c, srv.url()) == (202, b"")  # a new connection after it

    run(main())


def test_streamed_request_body_is_chunked_and_resent_from_its_factory() -> None:
    async def main() -> None:
        calls = 0

        def body() -> AsyncIterator[bytes]:
            async def chunks() -> AsyncIterator[bytes]:
                nonlocal calls
                calls += 1
                for part in (b"one-", b"", b"two"):
                    yield part

            return chunks()

        async with Server(reply(202)) as srv, HTTPClient(trust_env=False) as c:
            resp = await c.send("PATCH", srv.url(), {}, body)
            await resp.aclose()
            assert resp.status_code == 202 and calls == 1
            assert srv.requests[0].headers["transfer-encoding"] == "chunked"
            assert srv.requests[0].body == b"one-two"
            resp = await c.send("PUT", srv.url(), {"Content-Length": "7"}, body)
            await resp.aclose()
            assert srv.requests[1].headers["content-length"] == "7"
            assert srv.requests[1].body == b"one-two"

    run(main())


def test_an_early_answer_to_an_upload_is_returned() -> None:
    async def main() -> None:
        async def early(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 413 Too Large\r\nContent-Length: 0\r\nConnection: close\r\n")
            writer.write(b"\r\n")
            await writer.drain()
            writer.transport.abort()  # reset: the client's further writes fail

        server = await asyncio.start_server(early, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]

        def body() -> AsyncIterator[bytes]:
            async def chunks() -> AsyncIterator[bytes]:
                for _ in range(64):
                    yield b"z" * (1 << 20)
                    await asyncio.sleep(0)

            return chunks()

        async with HTTPClient(trust_env=False) as c:
            try:
                resp = await c.send("PATCH", f"http://127.0.0.1:{port}/", {}, body)
            except http.WriteError:
                pass  # the reset may also beat the answer to the client's socket
            else:
                assert resp.status_code == 413
                await resp.aclose()
        server.close()

    run(main())


def test_truncated_body_is_a_protocol_error() -> None:
    async def handler(request: Request, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        return False

    async def main() -> None:
        async with Server(handler) as srv, HTTPClient(trust_env=False) as c:
            resp = await c.send("GET", srv.url())
            with pytest.raises(http.RemoteProtocolError):
                await resp.aread()
            assert resp.is_closed

    run(main())


def test_read_timeout() -> None:
    async def handler(request: Request, writer: asyncio.StreamWriter) -> bool:
        await asyncio.Event().wait()  # never answers
        return False

    async def main() -> None:
        async with Server(handler) as srv, HTTPClient(trust_env=False, timeout=0.2) as c:
            with pytest.raises(http.ReadTimeout):
                await c.send("GET", srv.url())

    run(main())


def test_connection_refused_names_its_cause() -> None:
    async def main() -> None:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        async with HTTPClient(trust_env=False) as c:
            with pytest.raises(http.ConnectError) as caught:
                await c.send("GET", f"http://127.0.0.1:{port}/")
            assert isinstance(caught.value.__cause__, ConnectionRefusedError)

    run(main())


def test_idle_connections_are_capped_and_expire() -> None:
    async def main() -> None:
        servers = [Server(reply(200, b"ok")) for _ in range(3)]
        async with contextlib.AsyncExitStack() as stack:
            for s in servers:
                await stack.enter_async_context(s)
            c = await stack.enter_async_context(
                HTTPClient(trust_env=False, max_idle=2, idle_expiry=0.1)
            )
            for s in servers:
                assert await get(c, s.url()) == (200, b"ok")
            assert c._idle_count == 2
            # After the expiry the sweeper closes them (waited for, not slept on).
            while c._idle_count:
                await asyncio.sleep(0.05)
            assert await get(c, servers[0].url()) == (200, b"ok")
            assert servers[0].connections == 2

    run(main())


def test_split_urls() -> None:
    t = _split("https://Registry.Example:443/v2/x/manifests/1?n=2#frag")
    assert (t.scheme, t.host, t.port, t.target, t.authority) == (
        "https",
        "registry.example",
        443,
        "/v2/x/manifests/1?n=2",
        "registry.example",
    )
    t = _split("http://[::1]:5000")
    assert (t.host, t.port, t.target, t.authority) == ("::1", 5000, "/", "[::1]:5000")
    with pytest.raises(http.InvalidURL):
        _split("ftp://host/x")


def proxies(**env: str) -> Proxies:
    return Proxies.from_environ(env)


def target(url: str) -> http._Target:
    return _split(url)


def test_proxies_from_the_environment() -> None:
    p = proxies(HTTP_PROXY="proxy:3128", HTTPS_PROXY="http://u%40x:p@secure:8443")
    assert p.for_target(target("http://reg/v2/")).url == "http://proxy:3128"  # type: ignore[union-attr]
    via = p.for_target(target("https://reg/v2/"))
    assert via is not None and (via.host, via.port) == ("secure", 8443)
    assert via.authorization == "Basic dUB4OnA="  # u@x:p
    # lower case wins; ALL_PROXY fills in
    p = proxies(HTTP_PROXY="upper:1", http_proxy="lower:2", ALL_PROXY="all:3")
    assert p.for_target(target("http://reg/")).host == "lower"  # type: ignore[union-attr]
    assert p.for_target(target("https://reg/")).host == "all"  # type: ignore[union-attr]
    assert proxies().for_target(target("https://reg/")) is None


@pytest.mark.parametrize(
    ("no_proxy", "url", "proxied"),
    [
        ("example.com", "https://example.com/", False),
        ("example.com", "https://reg.example.com/", False),
        ("example.com", "https://notexample.com/", True),
        (".example.com", "https://example.com/", True),
        (".example.com", "https://reg.example.com/", False),
        ("*.example.com", "https://reg.example.com/", False),
        ("reg:5000", "http://reg:5000/", False),
        ("reg:5000", "http://reg:5001/", True),
        ("127.0.0.1", "http://127.0.0.1:5000/", False),
        ("10.0.0.0/8", "http://10.1.2.3:5000/", False),
        ("10.0.0.0/8", "http://11.1.2.3:5000/", True),
        ("::1", "http://[::1]:5000/", False),
        ("localhost", "http://localhost:5000/", False),
        ("*", "http://anything/", False),
        ("http://reg", "https://reg/", True),
        ("http://reg", "http://reg/", False),
        (" a.test , b.test ", "https://b.test/", False),
    ],
)
def test_no_proxy(no_proxy: str, url: str, proxied: bool) -> None:
    p = proxies(ALL_PROXY="http://proxy:3128", NO_PROXY=no_proxy)
    assert (p.for_target(target(url)) is not None) is proxied


def test_a_cgi_environment_ignores_upper_case_http_proxy() -> None:
    p = proxies(HTTP_PROXY="client-sent:1", REQUEST_METHOD="GET")
    assert p.for_target(target("http://reg/")) is None


def test_unsupported_proxy_scheme_is_refused() -> None:
    with pytest.raises(http.ProxyError):
        proxies(ALL_PROXY="socks5://proxy:1080")


# -- TLS: the system store read as a hashed directory ------------------------------------------


def _ca_and_server(tmp: Path) -> tuple[bytes, Path, Path]:
    """A CA's PEM, and a server certificate for 127.0.0.1 it signed (cert file, key file)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def build(subject: str, issuer: str, key: Any, signer: Any, ca: bool) -> x509.Certificate:
        b = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            san = [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
        else:
            usage = x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            )
            b = b.add_extension(usage, critical=True)
        return b.sign(signer, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    server_key = ec.generate_private_key(ec.SECP256R1())
    ca = build("liner test CA", "liner test CA", ca_key, ca_key, True)
    server = build("127.0.0.1", "liner test CA", server_key, ca_key, False)
    cert, key = tmp / "server.pem", tmp / "server.key"
    cert.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return ca.public_bytes(serialization.Encoding.PEM), cert, key


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl (for rehash) is absent")
def test_the_system_store_is_read_as_a_hashed_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    ca_pem, cert, key = _ca_and_server(tmp_path)
    store, empty = tmp_path / "certs", tmp_path / "other-certs"
    store.mkdir()
    empty.mkdir()
    (store / "liner-test-ca.pem").write_bytes(ca_pem)
    subprocess.run(["openssl", "rehash", str(store)], check=True, capture_output=True)
    assert http._hashed(str(store))
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)

    trusted = http.system_ssl_context(str(store))
    assert trusted.cert_store_stats()["x509_ca"] == 0  # nothing parsed up front
    assert trusted.verify_mode is ssl.CERT_REQUIRED and trusted.check_hostname

    async def main() -> None:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                await reader.readuntil(b"\r\n\r\n")
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
        url = f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}/"
        async with HTTPClient(ssl_context=trusted, trust_env=False) as c:
            assert await get(c, url) == (200, b"ok")
        # A store without that CA refuses the server (the empty directory: the default one).
        refusing = http.system_ssl_context(str(empty))
        async with HTTPClient(ssl_context=refusing, trust_env=False) as c:
            with pytest.raises(http.ConnectError) as caught:
                await get(c, url)
            assert isinstance(caught.value.__cause__, ssl.SSLCertVerificationError)
        server.close()

    run(main())


def test_a_store_without_hash_links_falls_back_to_the_default_reading(tmp_path: Path) -> None:
    assert not http._hashed(str(tmp_path))
    ctx = http.system_ssl_context(str(tmp_path))
    assert ctx.verify_mode is ssl.CERT_REQUIRED and ctx.check_hostname
