"""The SPDY framing module against a client nobody here wrote: crictl 1.29.0 (client-go and
moby/spdystream, as kubelet's streaming clients).

A throwaway server in the test answers the CRI Version, Exec and PortForward calls over a
unix socket and serves their URL: an HTTP upgrade to SPDY/3.1 decided by
linerd.cri.streaming.upgrade, then frames through linerd.cri.streaming.spdy only. What it
plays is a process, not a container: it writes fixed output or echoes stdin, then reports
a v4 exit status; for port-forward, an echo server behind every forwarded connection. So
crictl's own framing, header compression and stream handshake meet ours byte for byte, on
many multiplexed streams.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from liner_api.runtime.v1 import api_pb2, api_pb2_grpc
from linerd.cri.streaming import spdy, upgrade

REPO_ROOT = Path(__file__).resolve().parents[2]


def _crictl() -> str | None:
    found = shutil.which("crictl")
    if found:
        return found
    # ../shared beside the checkout (CI, the main checkout); a worktree sits one level deeper.
    for base in (REPO_ROOT.parent, REPO_ROOT.parent.parent):
        candidate = base / "shared" / "bin" / "crictl"
        if os.access(candidate, os.X_OK):
            return str(candidate)
    return None


CRICTL = _crictl()
pytestmark = [
    pytest.mark.unit,
    pytest.mark.skipif(CRICTL is None, reason="crictl not on PATH nor at ../shared/bin/crictl"),
]


@dataclass
class Session:
    """What the SPDY side saw, for the assertions."""

    request_line: str = ""
    protocol: str = ""
    stream_types: list[str] = field(default_factory=list)
    pings: int = 0


class _Runtime(api_pb2_grpc.RuntimeServiceServicer):
    def __init__(self, url: str) -> None:
        self.url = url
        self.requests: list[api_pb2.ExecRequest] = []
        self.pf_requests: list[api_pb2.PortForwardRequest] = []

    async def Version(
        self, request: api_pb2.VersionRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.VersionResponse:
        return api_pb2.VersionResponse(
            version="0.1.0", runtime_name="spdy-test", runtime_version="0", runtime_api_version="v1"
        )

    async def PortForward(
        self, request: api_pb2.PortForwardRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.PortForwardResponse:
        self.pf_requests.append(request)
        return api_pb2.PortForwardResponse(url=self.url)

    async def Exec(
        self, request: api_pb2.ExecRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.ExecResponse:
        self.requests.append(request)
        return api_pb2.ExecResponse(url=self.url)


async def _upgrade(
    reader: asyncio.StreamReader, protocols: tuple[str, ...]
) -> tuple[str, upgrade.Upgrade]:
    """Read crictl's request head and let the upgrade module decide on it."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    headers = [
        (name, value.strip()) for name, value in (line.split(":", 1) for line in head[1:] if line)
    ]
    decision = upgrade.negotiate(head[0].split()[0], headers, protocols)
    assert isinstance(decision, upgrade.Upgrade), decision
    return head[0], decision


def _status(exit_code: int) -> bytes:
    if exit_code == 0:
        return b""  # v4: an empty error stream is success
    return json.dumps(
        {
            "metadata": {},
            "status": "Failure",
            "message": f"command terminated with non-zero exit code: {exit_code}",
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": str(exit_code)}]},
        }
    ).encode()


async def _serve_spdy(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    runtime: _Runtime,
    session: Session,
    output: bytes,
    exit_code: int,
) -> None:
    session.request_line, decision = await _upgrade(reader, upgrade.REMOTECOMMAND_SPDY)
    session.protocol = decision.protocol
    writer.write(decision.response.head())
    request = runtime.requests[-1]
    expected = 1 + request.stdin + request.stdout + (request.stderr and not request.tty)
    encoder, decoder = spdy.FrameEncoder(), spdy.FrameDecoder()
    ids: dict[str, int] = {}

    def send(frame: spdy.Frame) -> None:
        writer.write(encoder.encode(frame))

    def finish() -> None:
        for kind in ("stdout", "stderr"):
            if kind in ids:
                send(spdy.DataFrame(ids[kind], b"", spdy.FLAG_FIN))
        send(spdy.DataFrame(ids["error"], _status(exit_code), spdy.FLAG_FIN))

    while data := await reader.read(65536):
        decoder.feed(data)
        for frame in decoder.frames():
            match frame:
                case spdy.SynStream(stream_id, headers):
                    kind = dict(headers)["streamtype"]
                    session.stream_types.append(kind)
                    ids[kind] = stream_id
                    send(spdy.SynReply(stream_id))
                    if len(ids) == expected and "stdin" not in ids:
                        send(spdy.DataFrame(ids["stdout"], output))
                        finish()
                case spdy.DataFrame(stream_id, payload, flags) if stream_id == ids.get("stdin"):
                    if payload:
                        send(spdy.DataFrame(ids["stdout"], payload))  # echo, like cat
                    if flags & spdy.FLAG_FIN:
                        finish()
                case spdy.Ping():
                    session.pings += 1
                    send(frame)
        await writer.drain()
    writer.close()


async def _run_crictl(
    tmp_path: Path, args: list[str], stdin: bytes, output: bytes = b"", exit_code: int = 0
) -> tuple[int, bytes, bytes, Session, _Runtime]:
    session = Session()
    runtime = _Runtime("")

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _serve_spdy(reader, writer, runtime, session, output, exit_code)

    http = await asyncio.start_server(on_connection, "127.0.0.1", 0)
    port = http.sockets[0].getsockname()[1]
    runtime.url = f"http://127.0.0.1:{port}/exec/tok12345"
    grpc_server = grpc.aio.server()
    api_pb2_grpc.add_RuntimeServiceServicer_to_server(runtime, grpc_server)
    endpoint = f"unix://{tmp_path / 'cri.sock'}"
    grpc_server.add_insecure_port(endpoint)
    await grpc_server.start()
    try:
        proc = await asyncio.create_subprocess_exec(
            str(CRICTL),
            "--runtime-endpoint",
            endpoint,
            "--image-endpoint",
            endpoint,
            "--timeout",
            "20s",
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "HOME": str(tmp_path)},  # no user crictl.yaml
        )
        out, err = await asyncio.wait_for(proc.communicate(stdin), 60)
        assert proc.returncode is not None
        return proc.returncode, out, err, session, runtime
    finally:
        await grpc_server.stop(None)
        http.close()
        await http.wait_closed()


def test_crictl_exec_reads_our_frames(tmp_path: Path) -> None:
    code, out, err, session, runtime = asyncio.run(
        _run_crictl(tmp_path, ["exec", "c0ffee", "echo", "-n", "hello"], b"", b"hello")
    )
    assert code == 0, err
    assert out == b"hello"
    assert list(runtime.requests[0].cmd) == ["echo", "-n", "hello"]
    assert session.request_line.startswith("POST /exec/tok12345 ")
    assert session.protocol == "v4.channel.k8s.io"
    assert session.stream_types == ["error", "stdout", "stderr"]


def test_crictl_exec_stdin_round_trip(tmp_path: Path) -> None:
    data = bytes(range(256)) * 1024  # 256 KiB: many DATA frames each way
    code, out, err, session, runtime = asyncio.run(
        _run_crictl(tmp_path, ["exec", "-i", "c0ffee", "cat"], data)
    )
    assert code == 0, err
    assert out == data
    assert runtime.requests[0].stdin
    assert session.stream_types == ["error", "stdin", "stdout", "stderr"]


def test_crictl_exec_sees_the_exit_status(tmp_path: Path) -> None:
    code, out, err, _, _ = asyncio.run(
        _run_crictl(tmp_path, ["exec", "c0ffee", "false"], b"", b"partial", exit_code=3)
    )
    assert out == b"partial"
    assert code != 0
    # client-go found the exit code in our v4 Status JSON.
    assert b"command terminated with exit code 3" in err


async def _serve_port_forward(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seen: list[tuple[str, str, str]]
) -> None:
    """Port-forward's side: each requestID brings an error and a data stream; the "pod"
    echoes what arrives on a data stream and half-closes it when the client does."""
    request_line, decision = await _upgrade(reader, upgrade.PORTFORWARD_SPDY)
    assert request_line.startswith("POST /portforward/tok12345 "), request_line
    assert decision.protocol == "portforward.k8s.io"
    writer.write(decision.response.head())
    encoder, decoder = spdy.FrameEncoder(), spdy.FrameDecoder()
    errors: dict[str, int] = {}  # requestID -> its error stream
    data_request: dict[int, str] = {}  # data stream -> its requestID
    while data := await reader.read(65536):
        decoder.feed(data)
        for frame in decoder.frames():
            match frame:
                case spdy.SynStream(stream_id, headers):
                    h = dict(headers)
                    seen.append((h["streamtype"], h["port"], h["requestid"]))
                    if h["streamtype"] == "error":
                        errors[h["requestid"]] = stream_id
                    else:
                        data_request[stream_id] = h["requestid"]
                    writer.write(encoder.encode(spdy.SynReply(stream_id)))
                case spdy.DataFrame(stream_id, payload, flags) if stream_id in data_request:
                    writer.write(encoder.encode(spdy.DataFrame(stream_id, payload, flags)))
                    if flags & spdy.FLAG_FIN:
                        error = errors[data_request[stream_id]]
                        writer.write(encoder.encode(spdy.DataFrame(error, b"", spdy.FLAG_FIN)))
                case spdy.Ping():
                    writer.write(encoder.encode(frame))
        await writer.drain()
    writer.close()


async def _port_forward(
    tmp_path: Path, connections: int
) -> tuple[list[bytes], str, list[tuple[str, str, str]]]:
    seen: list[tuple[str, str, str]] = []
    runtime = _Runtime("")

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _serve_port_forward(reader, writer, seen)

    http = await asyncio.start_server(on_connection, "127.0.0.1", 0)
    runtime.url = f"http://127.0.0.1:{http.sockets[0].getsockname()[1]}/portforward/tok12345"
    grpc_server = grpc.aio.server()
    api_pb2_grpc.add_RuntimeServiceServicer_to_server(runtime, grpc_server)
    endpoint = f"unix://{tmp_path / 'cri.sock'}"
    grpc_server.add_insecure_port(endpoint)
    await grpc_server.start()
    proc = await asyncio.create_subprocess_exec(
        str(CRICTL),
        "--runtime-endpoint",
        endpoint,
        "--image-endpoint",
        endpoint,
        "port-forward",
        "pod0",
        ":80",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "HOME": str(tmp_path)},
    )
    try:
        assert proc.stdout is not None
        # client-go says where it listens once it does: "Forwarding from 127.0.0.1:N -> 80".
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert line.startswith(b"Forwarding from 127.0.0.1:"), line
        local = int(line.split(b":")[1].split()[0])

        async def one(i: int) -> bytes:
            r, w = await asyncio.open_connection("127.0.0.1", local)
            payload = f"connection {i} ".encode() * (1000 + i)
            w.write(payload)
            await w.drain()
            w.write_eof()
            echoed = await r.read()
            w.close()
            return echoed if echoed == payload else b"MISMATCH " + echoed[:40]

        echoed = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(connections))), 60)
        return echoed, runtime.pf_requests[0].pod_sandbox_id, seen
    finally:
        proc.terminate()
        await proc.wait()
        await grpc_server.stop(None)
        http.close()
        await http.wait_closed()


def test_crictl_port_forward_multiplexes_streams(tmp_path: Path) -> None:
    echoed, pod, seen = asyncio.run(_port_forward(tmp_path, 8))
    assert all(not e.startswith(b"MISMATCH") for e in echoed)
    assert [len(e) for e in echoed] == [len(f"connection {i} ") * (1000 + i) for i in range(8)]
    assert pod == "pod0"
    # Per connection an error stream then a data stream, both naming the port and one
    # requestID (spdystream's headers, inflated by our decoder).
    assert sorted(seen) == sorted(
        (kind, "80", str(i)) for i in range(8) for kind in ("error", "data")
    )
