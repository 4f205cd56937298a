"""The streaming server on its own: tokens, the HTTP front, SPDY and WebSocket remotecommand
sessions and the handler's validation, with a fake process behind the streams. The SPDY
client frames with tests/spdy_reference.py, not with the server's module."""

from __future__ import annotations

import asyncio
import base64
import json
import os
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import pytest
from cri_stream_client import GOAWAY, PING, SpdyClient, exec_session

from liner_api.runtime.v1 import api_pb2
from linerd.cri.streaming import remotecommand, websocket
from linerd.cri.streaming.handler import StreamingHandler
from linerd.cri.streaming.remotecommand import Options, Result, Streams, serve_spdy, status
from linerd.cri.streaming.server import StreamServer, TokenCache
from linerd.cri.streaming.wsconn import serve_websocket
from linerd.errdefs import InvalidArgument, NotFound

pytestmark = pytest.mark.unit


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))  # type: ignore[arg-type]


def test_tokens_are_single_use_and_expire() -> None:
    now = [0.0]
    cache = TokenCache(ttl=60, clock=lambda: now[0])

    async def session(*_: Any) -> None:
        return None

    token = cache.insert("exec", session)
    assert len(token) >= 8 and all(c.isalnum() or c in "-_" for c in token)
    assert cache.consume("attach", token) is None  # another kind: gone all the same
    token = cache.insert("exec", session)
    assert cache.consume("exec", token) is session
    assert cache.consume("exec", token) is None
    token = cache.insert("exec", session)
    now[0] = 60.0
    assert cache.consume("exec", token) is None
    assert len(cache) == 0
    assert len({cache.insert("exec", session) for _ in range(100)}) == 100


def test_status_bodies() -> None:
    assert status(4, Result(0)) == b'{"metadata":{},"status":"Success"}'
    assert status(3, Result(0)) == b""
    doc = json.loads(status(4, Result(3)))
    assert doc["status"] == "Failure" and doc["reason"] == "NonZeroExitCode"
    assert doc["details"]["causes"] == [{"reason": "ExitCode", "message": "3"}]
    assert doc["message"].startswith("command terminated with non-zero exit code")
    assert status(2, Result(3)).startswith(b"command terminated with non-zero exit code")
    doc = json.loads(status(5, Result(None, "boom")))
    assert (doc["status"], doc["reason"], doc["message"], doc["code"]) == (
        "Failure",
        "InternalError",
        "boom",
        500,
    )
    assert status(1, Result(None, "boom")) == b"boom"


def test_resize_parser_takes_objects_split_anywhere() -> None:
    parser = remotecommand.ResizeParser()
    raw = b'{"Width":80,"Height":24}{"Width":100,"Height":40}\n{"Width":1'
    assert parser.feed(raw[:10]) == []
    assert parser.feed(raw[10:]) == [(80, 24), (100, 40)]
    assert parser.feed(b'20,"Height":30}') == [(120, 30)]
    assert parser.feed(b'{"Width":0,"Height":0}') == []


async def _http(url: str, method: str = "GET") -> int:
    parts = urlsplit(url)
    assert parts.hostname and parts.port
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    writer.write(f"{method} {parts.path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    writer.close()
    return int(head.split(b" ")[1])


def test_unknown_used_and_wrong_kind_tokens_are_404() -> None:
    async def main() -> None:
        server = StreamServer("127.0.0.1", 0)
        served: list[str] = []

        async def session(request: Any, reader: Any, writer: Any) -> None:
            served.append(request.method)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")

        url = await server.url("exec", session)
        assert url.startswith(f"http://127.0.0.1:{server.port}/exec/")
        assert await _http(url.replace("/exec/", "/attach/")) == 404  # wrong kind: used up
        assert await _http(url) == 404
        url = await server.url("exec", session)
        assert await _http(url, "POST") == 200
        assert await _http(url, "POST") == 404
        assert await _http(f"{server.base_url()}/exec/nosuchtoken") == 404
        assert await _http(f"{server.base_url()}/other/x") == 404
        assert served == ["POST"]
        await server.close()

    run(main())


Runner = Callable[[Streams], Awaitable[Result]]


async def _serve(
    runner: Runner, options: Options, transport: str = "spdy"
) -> tuple[StreamServer, str]:
    from linerd.cri.streaming import channels, upgrade

    server = StreamServer("127.0.0.1", 0)

    async def session(request: Any, reader: Any, writer: Any) -> None:
        decision = upgrade.negotiate(
            request.method,
            request.headers,
            upgrade.REMOTECOMMAND_SPDY,
            channels.REMOTECOMMAND_PROTOCOLS,
        )
        if isinstance(decision, upgrade.Response):
            writer.write(decision.head())
            return
        writer.write(decision.response.head())
        if decision.transport == "spdy":
            await serve_spdy(reader, writer, decision.protocol, options, runner)
        else:
            assert decision.channel_protocol is not None
            await serve_websocket(reader, writer, decision.channel_protocol, options, runner)

    return server, await server.url("exec", session)


async def _echo(streams: Streams) -> Result:
    """A fake process: stdin to stdout, "err" on stderr, exit 3."""
    assert streams.stdin is not None
    while data := await streams.stdin.get():
        await streams.write(remotecommand.STDOUT, data)
    await streams.write(remotecommand.STDERR, b"err")
    return Result(3)


def test_spdy_exec_session_end_to_end() -> None:
    async def main() -> None:
        server, url = await _serve(_echo, Options(True, True, True, False))
        got = await exec_session(url, stdin=b"hello" * 10000)
        assert got["stdout"] == b"hello" * 10000
        assert got["stderr"] == b"err"
        assert got["fin"] == {"stdout", "stderr", "error"}
        assert got["replies"] == {"error", "stdin", "stdout", "stderr"}
        doc = json.loads(got["error"])
        assert doc["details"]["causes"][0]["message"] == "3"
        assert [f["type"] for f in got["frames"]] == [GOAWAY]
        await server.idle()
        await server.close()

    run(main())


def test_spdy_v2_reports_text_and_pings_are_echoed() -> None:
    async def runner(streams: Streams) -> Result:
        await streams.write(remotecommand.STDOUT, b"x")
        return Result(7)

    async def main() -> None:
        server, url = await _serve(runner, Options(False, True, False, False))
        client = SpdyClient()
        assert (await client.connect(url, ("v9.unknown", "v2.channel.k8s.io")))[0] == 101
        assert ("x-stream-protocol-version", "v2.channel.k8s.io") in client.headers
        await client.ping(1)
        pong = await client.frame()
        assert pong is not None and (pong["type"], pong["ping_id"]) == (PING, 1)
        error = await client.open({"streamtype": "error"})
        out = await client.open({"streamtype": "stdout"})
        data: dict[int, bytes] = {error: b"", out: b""}
        while (frame := await client.frame()) is not None:
            if frame["type"] == "DATA":
                data[frame["stream_id"]] += frame["data"]
        assert data[out] == b"x"
        assert data[error] == b"command terminated with non-zero exit code: exit status 7"
        await server.close()

    run(main())


def test_spdy_client_that_leaves_sets_gone() -> None:
    ended: list[Result] = []

    async def runner(streams: Streams) -> Result:
        while True:  # as a process with endless output, until the client leaves
            try:
                await streams.write(remotecommand.STDOUT, b"y" * 65536)
            except ConnectionError:
                break
            if streams.gone.is_set():
                break
        ended.append(Result(None, "gone"))
        return ended[-1]

    async def main() -> None:
        server, url = await _serve(runner, Options(False, True, False, False))
        client = SpdyClient()
        await client.connect(url, ("v4.channel.k8s.io",))
        await client.open({"streamtype": "error"})
        out = await client.open({"streamtype": "stdout"})
        received = 0
        while received < 1 << 20:
            frame = await client.frame()
            assert frame is not None
            if frame["type"] == "DATA" and frame["stream_id"] == out:
                received += len(frame["data"])
        client.close()
        await server.idle()
        assert len(ended) == 1
        await server.close()

    run(main())


def test_websocket_exec_session() -> None:
    async def main() -> None:
        server, url = await _serve(_echo, Options(True, True, True, False))
        parts = urlsplit(url)
        assert parts.hostname and parts.port
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                f"GET {parts.path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
                f"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Protocol: v5.channel.k8s.io\r\n\r\n"
            ).encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101")
        mask = b"abcd"
        writer.write(websocket.encode_frame(websocket.Opcode.BINARY, b"\x00hi", mask_key=mask))
        writer.write(websocket.encode_frame(websocket.Opcode.BINARY, b"\xff\x00", mask_key=mask))
        decoder = websocket.FrameDecoder(require_mask=False)
        messages: list[bytes] = []
        closed = False
        while not closed and (data := await reader.read(65536)):
            decoder.feed(data)
            for event in decoder.events():
                if isinstance(event, websocket.Message):
                    messages.append(event.data)
                elif isinstance(event, websocket.Close):
                    closed = True
        writer.close()
        assert messages[0] == b"\x01"  # the opening message on stdout, the lowest written
        assert b"".join(m[1:] for m in messages if m[:1] == b"\x01") == b"hi"
        assert b"".join(m[1:] for m in messages if m[:1] == b"\x02") == b"err"
        errors = [m[1:] for m in messages if m[:1] == b"\x03"]
        assert json.loads(errors[-1])["details"]["causes"][0]["message"] == "3"
        await server.close()

    run(main())


class _Lookup:
    async def container(self, container_id: str) -> tuple[str, str]:
        raise NotFound(f"container {container_id} not found")

    async def sandbox_netns(self, sandbox_id: str) -> str | None:
        raise NotFound(f"sandbox {sandbox_id} not found")


def test_handler_validates_requests(tmp_path: Any) -> None:
    async def main() -> None:
        handler = StreamingHandler(None, None, _Lookup(), tmp_path)  # type: ignore[arg-type]
        bad = [
            api_pb2.ExecRequest(container_id="c", cmd=["x"]),  # no stream
            api_pb2.ExecRequest(container_id="c", cmd=["x"], tty=True, stdout=True, stderr=True),
            api_pb2.ExecRequest(container_id="c", stdout=True),  # no command
        ]
        for request in bad:
            with pytest.raises(InvalidArgument):
                await handler.exec(request)
        with pytest.raises(InvalidArgument):
            await handler.attach(api_pb2.AttachRequest(container_id="c"))
        with pytest.raises(NotFound):
            await handler.exec(api_pb2.ExecRequest(container_id="c", cmd=["x"], stdout=True))
        with pytest.raises(NotFound):
            await handler.attach(api_pb2.AttachRequest(container_id="c", stdout=True))
        with pytest.raises(NotFound):
            await handler.port_forward(api_pb2.PortForwardRequest(pod_sandbox_id="p"))
        assert not handler.server.started  # nothing listens before a URL is handed out
        await handler.close()

    run(main())


def test_record_lookup_reads_kind_and_netns_from_the_records() -> None:
    from linerd.core.types import Container, Encoded
    from linerd.cri.streaming.lookup import RecordLookup
    from linerd.runtime import ProcessState, TaskStatus

    def record(cid: str, kind: str, namespaces: list[dict[str, str]] | None = None) -> Container:
        spec = {"linux": {"namespaces": namespaces or []}}
        return Container(
            id=cid,
            runtime="io.containerd.runc.v2",
            spec=Encoded("spec", json.dumps(spec).encode()),
            labels={"io.cri-containerd.kind": kind},
        )

    records = {
        "c1": record("c1", "container"),
        "pinned": record("pinned", "sandbox", [{"type": "network", "path": "/run/netns/cni-1"}]),
        "own": record("own", "sandbox", [{"type": "pid"}, {"type": "network"}]),
        "host": record("host", "sandbox", [{"type": "pid"}]),
    }

    class Containers:
        async def get(self, namespace: str, cid: str) -> Container:
            assert namespace == "k8s.io"
            try:
                return records[cid]
            except KeyError:
                raise NotFound(cid) from None

    class Tasks:
        def state(self, namespace: str, cid: str) -> ProcessState:
            if cid != "own":
                raise NotFound(cid)
            return ProcessState(namespace, cid, "", 4242, TaskStatus.RUNNING)

    lookup = RecordLookup(Containers(), Tasks())  # type: ignore[arg-type]

    async def main() -> None:
        assert await lookup.container("c1") == ("k8s.io", "c1")
        for missing in ("pinned", "nosuch", ""):
            with pytest.raises(NotFound):
                await lookup.container(missing)
        assert await lookup.sandbox_netns("pinned") == "/run/netns/cni-1"
        assert await lookup.sandbox_netns("own") == "/proc/4242/ns/net"
        assert await lookup.sandbox_netns("host") is None
        with pytest.raises(NotFound):
            await lookup.sandbox_netns("c1")

    run(main())


def test_spdy_port_forward_pairs_streams_and_reports_dial_errors() -> None:
    from linerd.cri.streaming import portforward, upgrade

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.read())
        await writer.drain()
        writer.close()

    async def main() -> None:
        backend = await asyncio.start_server(echo, "127.0.0.1", 0)
        port = backend.sockets[0].getsockname()[1]
        closed = await asyncio.start_server(echo, "127.0.0.1", 0)
        closed_port = closed.sockets[0].getsockname()[1]
        closed.close()
        await closed.wait_closed()
        server = StreamServer("127.0.0.1", 0)

        async def session(request: Any, reader: Any, writer: Any) -> None:
            decision = upgrade.negotiate(request.method, request.headers, upgrade.PORTFORWARD_SPDY)
            assert isinstance(decision, upgrade.Upgrade)
            writer.write(decision.response.head())
            await portforward.serve(reader, writer, None)

        client = SpdyClient()
        url = await server.url("portforward", session)
        assert (await client.connect(url, ("portforward.k8s.io",)))[0] == 101
        streams: dict[int, tuple[str, int]] = {}
        for request_id, target in enumerate((port, closed_port, port)):
            common = {"port": str(target), "requestid": str(request_id)}
            error = await client.open({"streamtype": "error", **common}, fin=True)
            data = await client.open({"streamtype": "data", **common})
            streams[error] = ("error", request_id)
            streams[data] = ("data", request_id)
            if target == port:
                await client.data(data, f"payload {request_id} ".encode() * 5000, fin=True)
        got: dict[tuple[str, int], bytes] = {k: b"" for k in streams.values()}
        fins: set[tuple[str, int]] = set()
        while len(fins) < 5:  # both streams of 0 and 2, the error stream of 1
            frame = await client.frame()
            assert frame is not None
            if frame["type"] == "DATA":
                key = streams[frame["stream_id"]]
                got[key] += frame["data"]
                if frame["flags"] & 1:
                    fins.add(key)
        for request_id in (0, 2):
            assert got[("data", request_id)] == f"payload {request_id} ".encode() * 5000
            assert got[("error", request_id)] == b""
        assert got[("error", 1)].startswith(b"an error occurred forwarding")
        client.close()
        await server.idle()
        await server.close()
        backend.close()

    run(main())
