"""Port-forward over WebSocket through the streaming handler, host network (no netns), against
local TCP servers. The client is tests/ws_portforward_client.py, written from Kubernetes'
protocol facts, not from linerd's framing code."""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path
from typing import Any

import pytest
from ws_portforward_client import WsPortForward

from liner_api.runtime.v1 import api_pb2
from linerd.cri.streaming.handler import StreamingHandler
from linerd.cri.streaming.wsportforward import ports_of
from linerd.errdefs import InvalidArgument

pytestmark = pytest.mark.unit


class _HostLookup:
    async def container(self, container_id: str) -> tuple[str, str]:
        raise AssertionError("no container here")

    async def sandbox_netns(self, sandbox_id: str) -> str | None:
        return None  # host network


def test_ports_of_the_request_else_the_query() -> None:
    assert ports_of([80, 443], {"ports": ["1"]}) == [80, 443]
    assert ports_of([], {"ports": ["80,81", "82"]}) == [80, 81, 82]
    for query in ({}, {"ports": [""]}, {"ports": ["x"]}, {"ports": ["0"]}, {"ports": ["65536"]}):
        with pytest.raises(InvalidArgument):
            ports_of([], query)
    with pytest.raises(InvalidArgument):
        ports_of([70000], {})


async def _echo_server() -> tuple[asyncio.Server, int]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Answers each chunk upper-cased until the client's EOF, then closes.
        while data := await reader.read(65536):
            writer.write(data.upper())
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def _oneshot_server(reply: bytes) -> tuple[asyncio.Server, int]:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        writer.write(reply)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def _session(url: str, protocol: str, sends: dict[int, bytes]) -> tuple[Any, dict[int, bytes]]:
    client = WsPortForward(url, protocol)
    received: dict[int, bytes] = {}
    try:
        if client.status != 101:
            return client, received
        for channel, data in sends.items():
            client.send(channel, data)
        while (item := client.message()) is not None:
            received[item[0]] = received.get(item[0], b"") + item[1]
        return client, received
    finally:
        client.close()


@pytest.mark.parametrize("protocol", ["v4.channel.k8s.io", "v4.base64.channel.k8s.io"])
def test_two_ports_and_a_refused_one(tmp_path: Path, protocol: str) -> None:
    async def main() -> None:
        handler = StreamingHandler(None, None, _HostLookup(), tmp_path)  # type: ignore[arg-type]
        one, port_one = await _oneshot_server(b"first answer")
        two, port_two = await _oneshot_server(b"second answer" * 10000)
        closed, refused = await _oneshot_server(b"")
        closed.close()
        await closed.wait_closed()
        try:
            request = api_pb2.PortForwardRequest(
                pod_sandbox_id="pod", port=[port_one, port_two, refused]
            )
            url = (await handler.port_forward(request)).url
            client, got = await asyncio.to_thread(
                _session, url, protocol, {0: b"hello one", 2: b"hello two"}
            )
            assert client.status == 101
            assert f"Sec-WebSocket-Protocol: {protocol}" in client.head
            for index, port in enumerate((port_one, port_two, refused)):
                prefix = struct.pack("<H", port)
                assert got[2 * index].startswith(prefix) and got[2 * index + 1].startswith(prefix)
            assert got[0][2:] == b"first answer" and got[1] == struct.pack("<H", port_one)
            assert got[2][2:] == b"second answer" * 10000
            assert got[4] == struct.pack("<H", refused)
            assert b"error forwarding port" in got[5]
            await handler.server.idle()
        finally:
            one.close()
            two.close()
            await handler.close()

    asyncio.run(asyncio.wait_for(main(), 60))


def test_ports_from_the_query_and_the_client_closing(tmp_path: Path) -> None:
    async def main() -> None:
        handler = StreamingHandler(None, None, _HostLookup(), tmp_path)  # type: ignore[arg-type]
        echo, port = await _echo_server()
        try:
            # No ports in the CRI request and none in the query: 400.
            url = (await handler.port_forward(api_pb2.PortForwardRequest(pod_sandbox_id="p"))).url
            client = await asyncio.to_thread(WsPortForward, url)
            client.close()
            assert client.status == 400
            # The query's port; the echo answers; the client ends the session by closing.
            url = (await handler.port_forward(api_pb2.PortForwardRequest(pod_sandbox_id="p"))).url

            def converse() -> tuple[int, bytes]:
                client = WsPortForward(f"{url}?ports={port}")
                try:
                    assert client.status == 101, client.head
                    seen: dict[int, bytes] = {}
                    while len(seen.get(0, b"")) < 2 or len(seen.get(1, b"")) < 2:
                        channel, data = client.message() or (-1, b"")
                        assert channel >= 0
                        seen[channel] = seen.get(channel, b"") + data
                    client.send(0, b"ping")
                    answer = seen[0][2:]
                    while len(answer) < 4:
                        channel, data = client.message() or (-1, b"")
                        assert channel == 0
                        answer += data
                    return struct.unpack("<H", seen[0][:2])[0], answer
                finally:
                    client.close()

            assert await asyncio.to_thread(converse) == (port, b"PING")
            await handler.server.idle()  # the session ended with the client's close
        finally:
            echo.close()
            await handler.close()

    asyncio.run(asyncio.wait_for(main(), 60))
