"""A small SPDY/3.1 streaming client for the tests, framing with tests/spdy_reference.py (not
linerd's spdy module): HTTP upgrade, streams by `streamtype`, frames as dicts."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlsplit

from spdy_reference import Reference

from linerd.cri.streaming.spdy import DICTIONARY

SYN_STREAM, SYN_REPLY, RST_STREAM, PING, GOAWAY = 1, 2, 3, 6, 7
FIN = 0x01


class SpdyClient:
    def __init__(self) -> None:
        self.ref = Reference(DICTIONARY)
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.next_id = 1
        self._buffer = b""
        self.status = 0
        self.headers: list[tuple[str, str]] = []

    async def connect(
        self, url: str, protocols: tuple[str, ...], method: str = "POST"
    ) -> tuple[int, list[tuple[str, str]]]:
        parts = urlsplit(url)
        assert parts.hostname and parts.port
        self.reader, self.writer = await asyncio.open_connection(parts.hostname, parts.port)
        lines = [
            f"{method} {parts.path} HTTP/1.1",
            f"Host: {parts.netloc}",
            "Connection: Upgrade",
            "Upgrade: SPDY/3.1",
            *(f"X-Stream-Protocol-Version: {p}" for p in protocols),
            "Content-Length: 0",
        ]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = await self.reader.readuntil(b"\r\n\r\n")
        first, *rest = head.decode("latin-1").split("\r\n")
        self.status = int(first.split(" ")[1])
        self.headers = [
            (n.strip().lower(), v.strip()) for n, _, v in (x.partition(":") for x in rest if x)
        ]
        if self.status != 101:
            # The body of an error response (Content-Length given).
            length = int(dict(self.headers).get("content-length", "0"))
            await self.reader.readexactly(length)
        return self.status, self.headers

    def _send(self, frame: dict[str, Any]) -> None:
        assert self.writer is not None
        self.writer.write(self.ref.encode(frame))

    async def open(self, headers: dict[str, str], fin: bool = False) -> int:
        stream_id = self.next_id
        self.next_id += 2
        pairs = [(k.encode(), v.encode()) for k, v in headers.items()]
        self._send(
            {
                "type": SYN_STREAM,
                "flags": FIN if fin else 0,
                "stream_id": stream_id,
                "associated_to": 0,
                "priority": 0,
                "slot": 0,
                "headers": pairs,
            }
        )
        assert self.writer is not None
        await self.writer.drain()
        return stream_id

    async def data(self, stream_id: int, payload: bytes, fin: bool = False) -> None:
        self._send({"type": "DATA", "stream_id": stream_id, "flags": FIN if fin else 0,
                    "data": payload})  # fmt: skip
        assert self.writer is not None
        await self.writer.drain()

    async def ping(self, ping_id: int) -> None:
        self._send({"type": PING, "flags": 0, "ping_id": ping_id})
        assert self.writer is not None
        await self.writer.drain()

    async def frame(self) -> dict[str, Any] | None:
        """The next frame, None once the server closed the connection."""
        assert self.reader is not None
        while True:
            if len(self._buffer) >= 8:
                length = int.from_bytes(self._buffer[5:8], "big")
                if len(self._buffer) >= 8 + length:
                    frame, self._buffer = self.ref.decode(self._buffer)
                    return frame
            chunk = await self.reader.read(1 << 16)
            if not chunk:
                return None
            self._buffer += chunk

    def close(self) -> None:
        assert self.writer is not None
        self.writer.close()


async def exec_session(
    url: str,
    *,
    stdin: bytes | None = None,
    stdout: bool = True,
    stderr: bool = True,
    protocol: str = "v4.channel.k8s.io",
) -> dict[str, Any]:
    """A whole remotecommand session as client-go runs it: streams error, stdin, stdout,
    stderr; stdin sent and half-closed; everything read until the server closes."""
    client = SpdyClient()
    status, _ = await client.connect(url, (protocol,))
    assert status == 101
    ids = {"error": await client.open({"streamtype": "error"})}
    if stdin is not None:
        ids["stdin"] = await client.open({"streamtype": "stdin"})
    if stdout:
        ids["stdout"] = await client.open({"streamtype": "stdout"})
    if stderr:
        ids["stderr"] = await client.open({"streamtype": "stderr"})
    if stdin is not None:
        await client.data(ids["stdin"], stdin, fin=True)
    names = {v: k for k, v in ids.items()}
    got: dict[str, Any] = {k: b"" for k in ids}
    got["fin"] = set()
    got["replies"] = set()
    got["frames"] = []
    while (frame := await client.frame()) is not None:
        if frame["type"] == "DATA":
            name = names[frame["stream_id"]]
            got[name] += frame["data"]
            if frame["flags"] & FIN:
                got["fin"].add(name)
        elif frame["type"] == SYN_REPLY:
            got["replies"].add(names[frame["stream_id"]])
        else:
            got["frames"].append(frame)
    client.close()
    return got
