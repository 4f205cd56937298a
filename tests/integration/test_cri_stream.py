"""The CRI streaming server on real containers (runc, conmon, busybox) through clients nobody
here wrote: the `kubernetes` package's WebSocket client (WSClient) and crictl's SPDY (client-go).

Each test builds a Core in a temporary root (as tests/integration/test_local.py) and the
`streaming` handler group over it, with a small Lookup standing in for the CRI's records. The
crictl tests serve a test-local RuntimeService whose Exec, Attach and PortForward call the
handler (the daemon's CRI servicer does the same).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import pty
import shutil
import signal
import struct
import subprocess
import termios
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from cri_stream_client import SpdyClient

from liner_api.runtime.v1 import api_pb2, api_pb2_grpc
from liner_common import ocispec
from linerd.assembly import Core, build_core
from linerd.config import Config
from linerd.core.types import Container, Encoded
from linerd.cri import netns
from linerd.cri.streaming.handler import StreamingHandler
from linerd.cri.streaming.process import EXEC_PREFIX
from linerd.errdefs import InvalidArgument, LinerError, NotFound
from linerd.local.tasks import Stdio
from linerd.metrics import Metrics
from linerd.remotes.hosts import HostsConfig
from linerd.runtime import TaskStatus

REPO_ROOT = Path(__file__).resolve().parents[2]
SPEC_URL = "types.containerd.io/opencontainers/runtime-spec/1/Spec"
APPLETS = ("sh", "cat", "head", "echo", "sleep", "stty", "true", "yes", "printf")

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        shutil.which("runc") is None or not Path("/usr/bin/conmon").exists(),
        reason="runc and conmon are needed to run containers",
    ),
]


def _crictl() -> str | None:
    found = shutil.which("crictl")
    if found:
        return found
    for base in (REPO_ROOT.parent, REPO_ROOT.parent.parent):
        candidate = base / "shared" / "bin" / "crictl"
        if os.access(candidate, os.X_OK):
            return str(candidate)
    return None


CRICTL = _crictl()
needs_crictl = pytest.mark.skipif(
    CRICTL is None, reason="crictl not on PATH nor at ../shared/bin/crictl"
)


class Lookup:
    """The CRI's records as the handler sees them: CRI id -> task, pod -> netns."""

    def __init__(self) -> None:
        self.containers: dict[str, tuple[str, str]] = {}
        self.sandboxes: dict[str, str | None] = {}

    async def container(self, container_id: str) -> tuple[str, str]:
        try:
            return self.containers[container_id]
        except KeyError:
            raise NotFound(f"container {container_id} not found") from None

    async def sandbox_netns(self, sandbox_id: str) -> str | None:
        try:
            return self.sandboxes[sandbox_id]
        except KeyError:
            raise NotFound(f"sandbox {sandbox_id} not found") from None


@dataclass
class Env:
    core: Core
    handler: StreamingHandler
    lookup: Lookup
    tmp: Path
    namespace: str = field(default_factory=lambda: f"stream-{uuid.uuid4().hex[:8]}")


@asynccontextmanager
async def opened(tmp: Path) -> AsyncIterator[Env]:
    config = Config(root=str(tmp / "root"), state=str(tmp / "state"))
    for directory in (config.root, config.state):
        Path(directory).mkdir()
    hosts = HostsConfig.from_dict({})
    core = await asyncio.to_thread(build_core, config, lambda: hosts, Metrics())
    lookup = Lookup()
    handler = StreamingHandler(core.local.tasks, core.local.containers, lookup, config.state)
    env = Env(core, handler, lookup, tmp)
    try:
        yield env
    finally:
        await handler.close()
        for state in core.local.tasks.list(env.namespace):
            await remove(env, state.container_id)
        await core.runtime.close()
        core.db.close()


def run(tmp: Path, body: Callable[[Env], Awaitable[None]]) -> None:
    async def main() -> None:
        async with opened(tmp) as env:
            await asyncio.wait_for(body(env), 240)

    asyncio.run(main())


async def start(
    env: Env,
    args: list[str],
    *,
    stdin_pipe: bool = False,
    stdin_once: bool = False,
    tty: bool = False,
) -> str:
    """A running busybox container (no stdio: its output is logged by conmon); its CRI id."""
    core, ns = env.core, env.namespace
    cid = f"c{uuid.uuid4().hex[:12]}"
    mounts = await core.local.snapshots.prepare(ns, "native", cid, "", {}, None)
    rootfs = Path(mounts[0].source)
    (rootfs / "bin").mkdir()
    shutil.copy2("/bin/busybox", rootfs / "bin" / "busybox")
    for applet in APPLETS:
        (rootfs / "bin" / applet).symlink_to("busybox")
    spec = ocispec.generate(ns, cid, [ocispec.with_args(args)])
    spec["process"]["terminal"] = tty
    await core.local.containers.create(
        ns,
        Container(
            id=cid,
            runtime="io.containerd.runc.v2",
            spec=Encoded(SPEC_URL, json.dumps(spec).encode()),
            snapshotter="native",
            snapshot_key=cid,
        ),
    )
    # A container with stdin gets a pipe fed through conmon's attach socket, as the CRI's.
    await core.local.tasks.create(
        ns, cid, Stdio(terminal=tty), stdin_pipe=stdin_pipe, stdin_once=stdin_once
    )
    await core.local.tasks.start(ns, cid)
    env.lookup.containers[cid] = (ns, cid)
    return cid


async def remove(env: Env, cid: str) -> None:
    tasks, ns = env.core.local.tasks, env.namespace
    with contextlib.suppress(LinerError):
        await tasks.kill(ns, cid, signal.SIGKILL)
    with contextlib.suppress(LinerError):
        await tasks.wait(ns, cid)
        await tasks.delete(ns, cid)
    with contextlib.suppress(LinerError):
        await env.core.local.containers.delete(ns, cid)
    with contextlib.suppress(LinerError):
        await env.core.local.snapshots.remove(ns, "native", cid)


# -- the kubernetes package's WebSocket client --------------------------------------------------


def _wsclient(url: str, protocol: str | None = None) -> Any:
    """The package's client; it offers v5.channel.k8s.io then v4 unless told one."""
    ws_client = pytest.importorskip("kubernetes.stream.ws_client")
    from kubernetes.client import Configuration

    headers = {"sec-websocket-protocol": protocol} if protocol else None
    return ws_client.WSClient(Configuration(), url.replace("http://", "ws://"), headers, True)


def _ws_until_closed(client: Any) -> tuple[str, str, int | None]:
    out, err = "", ""
    while client.is_open():
        client.update(timeout=5)
        out += client.read_stdout() or ""
        err += client.read_stderr() or ""
    out += client.read_stdout() or ""
    err += client.read_stderr() or ""
    return out, err, client.returncode


def test_exec_through_the_kubernetes_websocket_client(tmp_path: Path) -> None:
    pytest.importorskip("kubernetes")

    async def body(env: Env) -> None:
        cid = await start(env, ["/bin/sleep", "3600"])
        h = env.handler

        async def ws_exec(cmd: list[str], stdin: bool = False) -> str:
            request = api_pb2.ExecRequest(
                container_id=cid, cmd=cmd, stdin=stdin, stdout=True, stderr=True
            )
            return (await h.exec(request)).url

        url = await ws_exec(["sh", "-c", "echo -n out; echo -n err >&2; exit 3"])
        assert url.startswith("http://127.0.0.1:")
        out, err, code = await asyncio.to_thread(lambda: _ws_until_closed(_wsclient(url)))
        assert (out, err, code) == ("out", "err", 3)

        url = await ws_exec(["echo", "-n", "hello"])
        assert await asyncio.to_thread(lambda: _ws_until_closed(_wsclient(url))) == (
            "hello",
            "",
            0,
        )

        url = await ws_exec(["head", "-c", "5"], stdin=True)

        def with_stdin() -> tuple[str, str, int | None]:
            client = _wsclient(url)
            client.write_stdin("hello, and more")
            return _ws_until_closed(client)

        assert await asyncio.to_thread(with_stdin) == ("hello", "", 0)

        # v5: the client closes stdin, the process sees EOF.
        url = await ws_exec(["cat"], stdin=True)

        def closing_stdin() -> tuple[str, str, int | None, str]:
            client = _wsclient(url)
            client.write_stdin("abc")
            client.close_channel(0)
            return (*_ws_until_closed(client), client.subprotocol)

        assert await asyncio.to_thread(closing_stdin) == ("abc", "", 0, "v5.channel.k8s.io")

        # v4 alone: the same Status on the error channel.
        url = await ws_exec(["sh", "-c", "exit 9"])
        assert await asyncio.to_thread(
            lambda: _ws_until_closed(_wsclient(url, "v4.channel.k8s.io"))
        ) == ("", "", 9)

        # The URL was used: it is gone.
        with pytest.raises(Exception):  # noqa: B017 (the client's own handshake error)
            await asyncio.to_thread(_wsclient, url)

    run(tmp_path, body)


def test_attach_through_the_kubernetes_websocket_client(tmp_path: Path) -> None:
    pytest.importorskip("kubernetes")

    async def body(env: Env) -> None:
        cid = await start(env, ["sh", "-c", "read x; echo got-$x; echo err-$x >&2"],
                          stdin_pipe=True)  # fmt: skip
        request = api_pb2.AttachRequest(container_id=cid, stdin=True, stdout=True, stderr=True)
        url = (await env.handler.attach(request)).url

        def session() -> tuple[str, str, int | None]:
            client = _wsclient(url)
            client.write_stdin("one\n")
            return _ws_until_closed(client)

        assert await asyncio.to_thread(session) == ("got-one\n", "err-one\n", 0)

    run(tmp_path, body)


def test_tty_exec_with_resize_through_the_kubernetes_websocket_client(tmp_path: Path) -> None:
    pytest.importorskip("kubernetes")

    async def body(env: Env) -> None:
        cid = await start(env, ["/bin/sleep", "3600"])
        request = api_pb2.ExecRequest(
            container_id=cid, cmd=["sh"], tty=True, stdin=True, stdout=True
        )
        url = (await env.handler.exec(request)).url

        def session() -> tuple[str, int | None]:
            client = _wsclient(url)
            client.write_channel(4, json.dumps({"Width": 100, "Height": 40}))
            seen = ""
            # Ask until the shell reports the new size (the resize and the line travel on
            # different channels; the state, not a delay, ends the loop).
            for _ in range(100):
                client.write_stdin("stty size\n")
                client.update(timeout=5)
                seen += client.read_stdout() or ""
                if "40 100" in seen:
                    break
            client.write_stdin("exit 5\n")
            out, _, code = _ws_until_closed(client)
            return seen + out, code

        seen, code = await asyncio.to_thread(session)
        assert "40 100" in seen
        assert code == 5

    run(tmp_path, body)


# -- crictl (client-go SPDY) --------------------------------------------------------------------


class _Runtime(api_pb2_grpc.RuntimeServiceServicer):
    """Exec, Attach and PortForward through the handler (errors mapped as the daemon does)."""

    def __init__(self, handler: StreamingHandler) -> None:
        self.handler = handler

    async def Version(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return api_pb2.VersionResponse(
            version="0.1.0", runtime_name="liner", runtime_version="0", runtime_api_version="v1"
        )

    async def _call(self, fn: Callable[[Any], Awaitable[Any]], request: Any, context: Any) -> Any:
        try:
            return await fn(request)
        except NotFound as e:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(e))
        except InvalidArgument as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))

    async def Exec(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._call(self.handler.exec, request, context)

    async def Attach(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._call(self.handler.attach, request, context)

    async def PortForward(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._call(self.handler.port_forward, request, context)


@asynccontextmanager
async def cri_endpoint(env: Env) -> AsyncIterator[str]:
    server = grpc.aio.server()
    api_pb2_grpc.add_RuntimeServiceServicer_to_server(_Runtime(env.handler), server)
    endpoint = f"unix://{env.tmp / 'cri.sock'}"
    server.add_insecure_port(endpoint)
    await server.start()
    try:
        yield endpoint
    finally:
        await server.stop(None)


def _crictl_argv(endpoint: str, *args: str) -> list[str]:
    assert CRICTL is not None
    return [CRICTL, "--runtime-endpoint", endpoint, "--image-endpoint", endpoint,
            "--timeout", "60s", *args]  # fmt: skip


async def crictl(
    env: Env, endpoint: str, *args: str, stdin: bytes = b""
) -> tuple[int, bytes, bytes]:
    proc = await asyncio.create_subprocess_exec(
        *_crictl_argv(endpoint, *args),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "HOME": str(env.tmp)},
    )
    out, err = await proc.communicate(stdin)
    assert proc.returncode is not None
    return proc.returncode, out, err


@needs_crictl
def test_crictl_exec_stdin_and_exit_codes(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        cid = await start(env, ["/bin/sleep", "3600"])
        async with cri_endpoint(env) as endpoint:
            code, out, err = await crictl(env, endpoint, "exec", cid, "echo", "-n", "hello")
            assert (code, out) == (0, b"hello"), err
            data = os.urandom(1 << 20)
            code, out, err = await crictl(env, endpoint, "exec", "-i", cid, "cat", stdin=data)
            assert code == 0, err
            assert out == data
            code, out, err = await crictl(
                env, endpoint, "exec", cid, "sh", "-c", "echo -n x; exit 3"
            )
            assert out == b"x"
            assert code != 0
            assert b"command terminated with exit code 3" in err
            code, _, err = await crictl(env, endpoint, "exec", "nosuch", "true")
            assert code != 0 and b"NotFound" in err
        await env.handler.server.idle()

    run(tmp_path, body)


def _rss_kib(field_name: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    raise AssertionError(field_name)


@needs_crictl
def test_crictl_exec_100mb_output_with_bounded_memory(tmp_path: Path) -> None:
    """linerd here is this test process, so its RSS is the process's: the high-water mark
    (VmHWM, reset through /proc/self/clear_refs) over the session minus the RSS before."""
    size = 100_000_000

    async def body(env: Env) -> None:
        cid = await start(env, ["/bin/sleep", "3600"])
        async with cri_endpoint(env) as endpoint:
            # One session first: thread pools, imports and buffers settle before measuring.
            assert (await crictl(env, endpoint, "exec", cid, "true"))[0] == 0
            Path("/proc/self/clear_refs").write_text("5")
            before = _rss_kib("VmRSS")
            proc = await asyncio.create_subprocess_exec(
                *_crictl_argv(endpoint, "exec", cid, "head", "-c", str(size), "/dev/zero"),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env={**os.environ, "HOME": str(env.tmp)},
            )
            assert proc.stdout is not None
            received = 0
            zeros = True
            while chunk := await proc.stdout.read(1 << 16):
                received += len(chunk)
                zeros = zeros and not chunk.strip(b"\0")
            await proc.wait()
            peak = _rss_kib("VmHWM")
        assert proc.returncode == 0
        assert received == size and zeros
        print(f"RSS before {before} KiB, peak during the session {peak} KiB")
        assert peak - before < 20 * 1024, f"RSS grew by {peak - before} KiB"

    run(tmp_path, body)


@needs_crictl
def test_crictl_exec_it_with_a_terminal(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        cid = await start(env, ["/bin/sleep", "3600"])
        async with cri_endpoint(env) as endpoint:
            master, slave = pty.openpty()
            fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 77, 0, 0))
            proc = await asyncio.create_subprocess_exec(
                *_crictl_argv(endpoint, "exec", "-it", cid, "sh"),
                stdin=slave,
                stdout=slave,
                stderr=slave,
                env={**os.environ, "HOME": str(env.tmp)},
                start_new_session=True,
            )
            os.close(slave)

            def until(marker: bytes) -> bytes:
                seen = b""
                while marker not in seen:
                    chunk = os.read(master, 4096)
                    assert chunk, seen
                    seen += chunk
                return seen

            def converse() -> tuple[bytes, bytes]:
                os.write(master, b"stty size; echo done-$((6*7))\n")
                first = until(b"done-42")
                # The terminal changes size: crictl hears SIGWINCH (it has no controlling
                # terminal here, so the test sends it) and sends the new size.
                fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 120, 0, 0))
                os.kill(proc.pid, signal.SIGWINCH)
                later = b""
                for n in range(100):
                    os.write(master, f"stty size; echo mark-$(({n}+1000))\n".encode())
                    later += until(f"mark-{n + 1000}".encode())
                    if b"50 120" in later:
                        break
                os.write(master, b"exit 4\n")
                with contextlib.suppress(OSError):
                    while os.read(master, 4096):
                        pass
                return first, later

            first, later = await asyncio.to_thread(converse)
            await proc.wait()
            os.close(master)
        # The size crictl read from its terminal reached the process's pty before it ran.
        assert b"33 77" in first
        assert b"50 120" in later
        assert proc.returncode != 0  # exit 4 reported back

    run(tmp_path, body)


@needs_crictl
def test_crictl_attach_to_a_container_with_stdin(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        cid = await start(env, ["/bin/sh"], stdin_pipe=True, stdin_once=True)
        async with cri_endpoint(env) as endpoint:
            code, out, err = await crictl(env, endpoint, "attach", "-i", cid,
                                          stdin=b"echo -n hello\n")  # fmt: skip
        assert code == 0, err
        assert out == b"hello"
        # stdin_once: the client's EOF closed the shell's stdin, so the container ended.
        info = await env.core.local.tasks.wait(env.namespace, cid)
        assert info.exit_status == 0

    run(tmp_path, body)


@needs_crictl
def test_crictl_attach_stdout_stderr_and_stdin_left_open(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        # Without stdin_once, conmon leaves the shell's stdin open when the client closes
        # its own: the script ends by itself after one line.
        cid = await start(env, ["sh", "-c", "read x; echo got-$x; echo err-$x >&2"],
                          stdin_pipe=True)  # fmt: skip
        async with cri_endpoint(env) as endpoint:
            code, out, err = await crictl(env, endpoint, "attach", "-i", cid, stdin=b"one\n")
        assert code == 0, err
        assert out == b"got-one\n"
        assert b"err-one" in err
        assert (await env.core.local.tasks.wait(env.namespace, cid)).exit_status == 0

    run(tmp_path, body)


def test_slow_reader_does_not_grow_memory(tmp_path: Path) -> None:
    """A client that reads far slower than the process writes: the process is held back
    (its pipe fills), linerd's memory is not (RSS measured as in the 100 MB test)."""
    size = 50_000_000

    async def body(env: Env) -> None:
        cid = await start(env, ["/bin/sleep", "3600"])
        request = api_pb2.ExecRequest(
            container_id=cid, cmd=["head", "-c", str(size), "/dev/zero"], stdout=True
        )

        async def session(slow: bool) -> int:
            client = SpdyClient()
            await client.connect((await env.handler.exec(request)).url, ("v4.channel.k8s.io",))
            await client.open({"streamtype": "error"})
            out = await client.open({"streamtype": "stdout"})
            received = 0
            while (frame := await client.frame()) is not None:
                if frame["type"] == "DATA" and frame["stream_id"] == out:
                    received += len(frame["data"])
                    if slow:
                        await asyncio.sleep(0.001)  # a slow client, not a synchronization
            client.close()
            return received

        request.cmd[:] = ["head", "-c", "1000000", "/dev/zero"]
        assert await session(slow=False) == 1_000_000
        request.cmd[:] = ["head", "-c", str(size), "/dev/zero"]
        Path("/proc/self/clear_refs").write_text("5")
        before = _rss_kib("VmRSS")
        assert await session(slow=True) == size
        peak = _rss_kib("VmHWM")
        print(f"RSS before {before} KiB, peak during the session {peak} KiB")
        assert peak - before < 20 * 1024, f"RSS grew by {peak - before} KiB"
        await env.handler.server.idle()

    run(tmp_path, body)


def test_attach_to_a_tty_container(tmp_path: Path) -> None:
    """A TTY container's pty is conmon's; the attach socket takes a client beside the
    runtime's own relay."""

    async def body(env: Env) -> None:
        cid = await start(env, ["sh"], tty=True)
        request = api_pb2.AttachRequest(container_id=cid, stdin=True, stdout=True, tty=True)
        client = SpdyClient()
        await client.connect((await env.handler.attach(request)).url, ("v4.channel.k8s.io",))
        await client.open({"streamtype": "error"})
        stdin = await client.open({"streamtype": "stdin"})
        out = await client.open({"streamtype": "stdout"})
        await client.open({"streamtype": "resize"})
        await client.data(stdin, b"echo hi-$((20+22))\n")
        seen = b""
        while b"hi-42" not in seen:
            frame = await client.frame()
            assert frame is not None, seen
            if frame["type"] == "DATA" and frame["stream_id"] == out:
                seen += frame["data"]
        await client.data(stdin, b"exit 0\n")
        while (frame := await client.frame()) is not None:
            pass
        client.close()
        assert (await env.core.local.tasks.wait(env.namespace, cid)).exit_status == 0

    run(tmp_path, body)


# -- port-forward --------------------------------------------------------------------------------

ECHO_CGI = """#!/bin/sh
printf 'Content-Type: application/octet-stream\r\n\r\n'
exec head -c "$CONTENT_LENGTH"
"""


async def _post(port: int, body: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = f"POST /cgi-bin/echo HTTP/1.0\r\nContent-Length: {len(body)}\r\n\r\n"
    writer.write(head.encode() + body)
    await writer.drain()
    response = await reader.read()
    writer.close()
    _, _, payload = response.partition(b"\r\n\r\n")
    return payload


@needs_crictl
def test_crictl_port_forward_into_a_netns_20_connections(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        www = env.tmp / "www"
        (www / "cgi-bin").mkdir(parents=True)
        cgi = www / "cgi-bin" / "echo"
        cgi.write_text(ECHO_CGI)
        cgi.chmod(0o755)
        ns_path = await asyncio.to_thread(netns.create, env.tmp / "netns")
        httpd: subprocess.Popen[bytes] | None = None
        try:
            await netns.arun_in(
                ns_path,
                lambda: subprocess.run(["busybox", "ip", "link", "set", "lo", "up"], check=True),
            )
            httpd = await netns.arun_in(
                ns_path,
                lambda: subprocess.Popen(
                    ["busybox", "httpd", "-f", "-p", "127.0.0.1:8080", "-h", str(www)]
                ),
            )
            await _listening(ns_path, 8080)
            env.lookup.sandboxes["pod0"] = str(ns_path)
            async with cri_endpoint(env) as endpoint:
                proc = await asyncio.create_subprocess_exec(
                    *_crictl_argv(endpoint, "port-forward", "pod0", ":8080"),
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                    env={**os.environ, "HOME": str(env.tmp)},
                )
                try:
                    assert proc.stdout is not None
                    line = await asyncio.wait_for(proc.stdout.readline(), 30)
                    assert line.startswith(b"Forwarding from 127.0.0.1:"), line
                    local = int(line.split(b":")[1].split()[0])
                    bodies = [os.urandom(100_000 + i * 997) for i in range(20)]
                    echoed = await asyncio.gather(*(_post(local, b) for b in bodies))
                    assert [len(e) for e in echoed] == [len(b) for b in bodies]
                    assert echoed == bodies
                finally:
                    proc.terminate()
                    await proc.wait()
            await env.handler.server.idle()
        finally:
            if httpd is not None:
                httpd.kill()
                await asyncio.to_thread(httpd.wait)
            await asyncio.to_thread(netns.remove, ns_path)

    run(tmp_path, body)


async def _listening(ns_path: Path, port: int) -> None:
    """Until something accepts on 127.0.0.1:`port` in the namespace (httpd has started)."""
    for _ in range(200):
        sock = await netns.asocket_in(ns_path)
        try:
            sock.settimeout(5)
            await asyncio.to_thread(sock.connect, ("127.0.0.1", port))
            return
        except ConnectionRefusedError:
            await asyncio.sleep(0.05)
        finally:
            sock.close()
    raise AssertionError(f"nothing listens on {port}")


@needs_crictl
def test_crictl_port_forward_host_network(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(await reader.read())
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        env.lookup.sandboxes["hostpod"] = None
        async with cri_endpoint(env) as endpoint:
            proc = await asyncio.create_subprocess_exec(
                *_crictl_argv(endpoint, "port-forward", "hostpod", f":{port}"),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env={**os.environ, "HOME": str(env.tmp)},
            )
            try:
                assert proc.stdout is not None
                line = await asyncio.wait_for(proc.stdout.readline(), 30)
                local = int(line.split(b":")[1].split()[0])
                reader, writer = await asyncio.open_connection("127.0.0.1", local)
                writer.write(b"ping" * 1000)
                writer.write_eof()
                assert await reader.read() == b"ping" * 1000
                writer.close()
            finally:
                proc.terminate()
                await proc.wait()
        server.close()

    run(tmp_path, body)


# -- a client that leaves ---------------------------------------------------------------------


def _fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def _threads() -> list[str]:
    return sorted(t.name for t in threading.enumerate() if not t.name.startswith("asyncio_"))


@pytest.mark.parametrize("tty", [False, True])
def test_disconnect_mid_stream_leaves_nothing(tmp_path: Path, tty: bool) -> None:
    async def body(env: Env) -> None:
        cid = await start(env, ["/bin/sleep", "3600"])
        tasks = env.core.local.tasks
        request = api_pb2.ExecRequest(container_id=cid, cmd=["yes"], stdout=True, tty=tty)

        async def session(leave_after: int) -> None:
            url = (await env.handler.exec(request)).url
            client = SpdyClient()
            await client.connect(url, ("v4.channel.k8s.io",))
            await client.open({"streamtype": "error"})
            out = await client.open({"streamtype": "stdout"})
            if tty:
                await client.open({"streamtype": "resize"})
            received = 0
            while received < leave_after:
                frame = await client.frame()
                assert frame is not None
                if frame["type"] == "DATA" and frame["stream_id"] == out:
                    received += len(frame["data"])
            client.close()
            await env.handler.server.idle()

        await session(1 << 20)  # thread pools and the like settle
        fds, threads = _fds(), _threads()
        await session(4 << 20)
        assert [p.pid for p in await tasks.pids(env.namespace, cid)] == [
            tasks.state(env.namespace, cid).pid
        ]
        assert _fds() == fds
        assert _threads() == threads
        assert list(env.handler.fifo_dir.iterdir()) == []

    run(tmp_path, body)


def test_a_url_for_an_unknown_container_is_refused(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        with pytest.raises(NotFound):
            await env.handler.exec(api_pb2.ExecRequest(container_id="x", cmd=["a"], stdout=True))
        with pytest.raises(NotFound):
            await env.handler.port_forward(api_pb2.PortForwardRequest(pod_sandbox_id="p"))

    run(tmp_path, body)


def test_execs_a_previous_daemon_left_are_ended_at_start(tmp_path: Path) -> None:
    """A daemon that dies mid-session leaves its exec running (conmon keeps it, the next
    runtime recovers it) with no client: the next handler kills and deletes it, and leaves
    an exec that is not a session's (ctr's) alone."""

    async def open_core() -> Core:
        config = Config(root=str(tmp_path / "root"), state=str(tmp_path / "state"))
        for directory in (config.root, config.state):
            Path(directory).mkdir(exist_ok=True)
        hosts = HostsConfig.from_dict({})
        core = await asyncio.to_thread(build_core, config, lambda: hosts, Metrics())
        await core.runtime.recover_all()
        return core

    def handler_of(core: Core, lookup: Lookup, namespace: str) -> StreamingHandler:
        tasks, containers = core.local.tasks, core.local.containers
        return StreamingHandler(tasks, containers, lookup, core.state, namespace=namespace)

    async def main() -> None:
        lookup, namespace = Lookup(), f"stream-{uuid.uuid4().hex[:8]}"
        core = await open_core()
        env = Env(core, handler_of(core, lookup, namespace), lookup, tmp_path, namespace)
        cid = await start(env, ["/bin/sleep", "3600"])
        tasks = core.local.tasks
        spec = json.dumps({"args": ["/bin/sleep", "3600"], "cwd": "/", "env": ["PATH=/bin"],
                           "user": {"uid": 0, "gid": 0}}).encode()  # fmt: skip
        left, other = EXEC_PREFIX + uuid.uuid4().hex[:24], "ctr-exec"
        for exec_id in (left, other):
            await tasks.exec(namespace, cid, exec_id, spec, Stdio())
            await tasks.start(namespace, cid, exec_id)
        left_pid = tasks.state(namespace, cid, left).pid
        # The daemon dies: its runtime stops tracking; containers, conmons and execs run on.
        await env.handler.close()
        await core.runtime.close()
        core.db.close()

        core = await open_core()
        env = Env(core, handler_of(core, lookup, namespace), lookup, tmp_path, namespace)
        try:
            assert core.local.tasks.state(namespace, cid, left).status == TaskStatus.RUNNING
            await env.handler.start()
            with pytest.raises(NotFound):
                core.local.tasks.state(namespace, cid, left)
            with pytest.raises(ProcessLookupError):
                os.kill(left_pid, 0)
            assert core.local.tasks.state(namespace, cid, other).status == TaskStatus.RUNNING
        finally:
            await env.handler.close()
            # The task's delete refuses while an exec runs: end ctr's exec first, or its
            # exit may come after the delete and leave the task and its rootfs mounted.
            with contextlib.suppress(LinerError):
                await core.local.tasks.kill(namespace, cid, signal.SIGKILL, exec_id=other)
                await core.local.tasks.wait(namespace, cid, other)
                await core.local.tasks.delete_process(namespace, cid, other)
            await remove(env, cid)
            await core.runtime.close()
            core.db.close()

    asyncio.run(asyncio.wait_for(main(), 240))
