"""The process side of exec and attach: a container's process wired to a session's `Streams`.

Exec runs through `core.local.tasks` with FIFOs in a private directory under linerd's state
dir (what the runtime takes from every client: a non-TTY exec writes into them itself; a TTY
exec's output comes through the runtime's relay of conmon's attach socket). linerd opens
the read ends first (the runtime waits for a reader), then reads them without blocking from
the event loop: a chunk goes to the client, and the next is read only once the client's
socket took it, so a slow client stalls the process (its pipe fills) and never linerd's
memory.

Attach connects to conmon's attach socket of the container's init process (the frames are
one stream byte, 2 stdout or 3 stderr, then the data; what the client writes is stdin).

When the client disconnects, the exec is killed and deleted, the FIFOs and their fds closed
and removed: nothing of the session is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import secrets
import shutil
import signal
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from linerd.cri.streaming.remotecommand import STDERR, STDOUT, Result, Streams
from linerd.cri.streaming.spdyconn import CHUNK, ConnectionClosed
from linerd.errdefs import LinerError, NotFound
from linerd.local.tasks import Stdio
from linerd.runtime import TaskStatus

if TYPE_CHECKING:
    from linerd.local.containers import Containers
    from linerd.local.tasks import Tasks

log = structlog.get_logger("linerd.cri.streaming")

_ATTACH_STDOUT, _ATTACH_STDERR = 2, 3
EXEC_PREFIX = "cri-"  # every exec id of a session: what a restarted handler looks for
FIRST_SIZE_WAIT = 1.0  # how long a TTY exec waits for the client's first terminal size
OUTPUT_DRAIN = 10.0  # how long the outputs of a killed exec may take to reach EOF


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def _readable(fd: int, *others: asyncio.Event) -> None:
    """Until `fd` is readable (or one of `others` is set)."""
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    loop.add_reader(fd, _wake, ready)
    waits = [asyncio.ensure_future(event.wait()) for event in others]
    try:
        await asyncio.wait([ready, *waits], return_when=asyncio.FIRST_COMPLETED)
    finally:
        loop.remove_reader(fd)
        ready.cancel()
        for wait in waits:
            wait.cancel()


async def _write_fd(fd: int, data: bytes) -> None:
    loop = asyncio.get_running_loop()
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
            continue
        except BlockingIOError:
            pass
        ready = loop.create_future()
        loop.add_writer(fd, _wake, ready)
        try:
            await ready
        finally:
            loop.remove_writer(fd)


async def _pump_out(
    fd: int, channel: int, streams: Streams, exited: asyncio.Event, tty: bool
) -> None:
    """Copy a FIFO to the client until EOF or, without a TTY, until the process has exited
    and the FIFO is empty: what an exited process wrote is all in the pipe by then, while a
    child it left behind may hold the pipe open for good. (A TTY's FIFO is written by the
    runtime's relay only, which closes it once conmon is done.) Once the client is gone the
    rest is read and dropped, so no writer (the process, the relay thread) stays blocked."""
    client = True
    while True:
        try:
            data = os.read(fd, CHUNK)
        except BlockingIOError:
            if not tty and exited.is_set():
                return
            await _readable(fd, exited)
            continue
        if not data:
            return
        if client:
            try:
                await streams.write(channel, data)
            except ConnectionClosed:
                client = False


def _mkfifo(path: Path) -> str:
    os.mkfifo(path, 0o600)
    return str(path)


class ExecSession:
    """One exec: FIFOs, the task's exec, the pumps; `run` returns how it ended."""

    def __init__(
        self,
        tasks: Tasks,
        containers: Containers,
        directory: Path,
        namespace: str,
        container_id: str,
        command: list[str],
    ) -> None:
        self.tasks = tasks
        self.containers = containers
        self.namespace = namespace
        self.container_id = container_id
        self.command = command
        self.exec_id = EXEC_PREFIX + secrets.token_hex(12)
        self.dir = directory / self.exec_id
        self._fds: list[int] = []

    async def _process_spec(self, tty: bool) -> bytes:
        container = await self.containers.get(self.namespace, self.container_id)
        spec: dict[str, Any] = {}
        if container.spec is not None:
            with contextlib.suppress(ValueError):
                spec = json.loads(container.spec.value)
        process = dict(spec.get("process") or {})
        process.pop("consoleSize", None)
        process["args"] = list(self.command)
        process["terminal"] = tty
        process.setdefault("cwd", "/")
        return json.dumps(process).encode()

    def _open_sync(self, stdin: bool, stdout: bool, stderr: bool) -> Stdio:
        self.dir.mkdir(parents=True, mode=0o700)
        paths = {}
        for name, wanted in (("stdin", stdin), ("stdout", stdout), ("stderr", stderr)):
            if wanted:
                paths[name] = _mkfifo(self.dir / name)
        return Stdio(paths.get("stdin", ""), paths.get("stdout", ""), paths.get("stderr", ""))

    def _open_reader(self, path: str) -> int:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        self._fds.append(fd)
        return fd

    def _close_fd(self, fd: int) -> None:
        if fd in self._fds:
            self._fds.remove(fd)
            with contextlib.suppress(OSError):
                os.close(fd)

    async def run(self, streams: Streams) -> Result:
        opts = streams.options
        command = tuple(self.command)
        try:
            spec = await self._process_spec(opts.tty)
            paths = await asyncio.to_thread(
                self._open_sync, opts.stdin, opts.stdout or opts.tty, opts.stderr and not opts.tty
            )
        except (LinerError, OSError) as e:
            await asyncio.to_thread(shutil.rmtree, self.dir, True)
            return Result(None, str(e), command)
        stdio = Stdio(paths.stdin, paths.stdout, paths.stderr, terminal=opts.tty)
        pumps: list[asyncio.Task[Any]] = []
        outputs: list[asyncio.Task[None]] = []
        added = started = False
        try:
            # Readers first: the runtime opens the writers and waits for a reader.
            out_fd = self._open_reader(stdio.stdout) if stdio.stdout else -1
            err_fd = self._open_reader(stdio.stderr) if stdio.stderr else -1
            await self.tasks.exec(self.namespace, self.container_id, self.exec_id, spec, stdio)
            added = True
            in_fd = -1
            if stdio.stdin:
                # The runtime holds the read end from Exec on, so this open does not block.
                in_fd = os.open(stdio.stdin, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
                self._fds.append(in_fd)
            if streams.resize is not None:
                # The client sends the terminal's size right after its streams: given before
                # the start, it is the pty's size from the first instruction on.
                with contextlib.suppress(TimeoutError):
                    width, height = await asyncio.wait_for(streams.resize.get(), FIRST_SIZE_WAIT)
                    await self.tasks.resize_pty(
                        self.namespace, self.container_id, width, height, self.exec_id
                    )
                pumps.append(asyncio.create_task(self._resize(streams.resize)))
            await self.tasks.start(self.namespace, self.container_id, self.exec_id)
            started = True
            exited = asyncio.Event()
            for fd, channel in ((out_fd, STDOUT), (err_fd, STDERR)):
                if fd >= 0:
                    pump = _pump_out(fd, channel, streams, exited, opts.tty)
                    outputs.append(asyncio.create_task(pump))
            if in_fd >= 0 and streams.stdin is not None:
                pumps.append(asyncio.create_task(self._stdin(in_fd, streams.stdin)))
            waiting = asyncio.create_task(
                self.tasks.wait(self.namespace, self.container_id, self.exec_id)
            )
            pumps.append(waiting)
            gone = asyncio.create_task(streams.gone.wait())
            await asyncio.wait({waiting, gone}, return_when=asyncio.FIRST_COMPLETED)
            gone.cancel()
            left = not waiting.done()
            if left:
                await self._kill()
            info = await waiting
            exited.set()
            if outputs:
                # After a client left, the outputs only drain what is left: bounded.
                await asyncio.wait(outputs, timeout=OUTPUT_DRAIN if left else None)
            if left or streams.gone.is_set():
                return Result(None, "client disconnected", command)
            return Result(info.exit_status, "", command)
        except ConnectionClosed:
            if started:
                await self._kill()
            return Result(None, "client disconnected", command)
        except LinerError as e:
            return Result(None, str(e), command)
        finally:
            for pump in [*pumps, *outputs]:
                pump.cancel()
            for pump in [*pumps, *outputs]:
                with contextlib.suppress(BaseException):
                    await pump
            for fd in list(self._fds):
                self._close_fd(fd)
            if added:
                await self._delete(started)
            await asyncio.to_thread(shutil.rmtree, self.dir, True)

    async def _stdin(self, fd: int, queue: asyncio.Queue[bytes]) -> None:
        try:
            while data := await queue.get():
                await _write_fd(fd, data)
        except OSError as e:
            if e.errno != errno.EPIPE:
                raise
        finally:
            # The client closed stdin: the process sees EOF once every writer is closed,
            # ours and the runtime's.
            self._close_fd(fd)
            with contextlib.suppress(LinerError):
                await self.tasks.close_stdin(self.namespace, self.container_id, self.exec_id)

    async def _resize(self, queue: asyncio.Queue[tuple[int, int]]) -> None:
        while True:
            width, height = await queue.get()
            with contextlib.suppress(LinerError):
                await self.tasks.resize_pty(
                    self.namespace, self.container_id, width, height, self.exec_id
                )

    async def _kill(self) -> None:
        with contextlib.suppress(LinerError):
            await self.tasks.kill(
                self.namespace, self.container_id, signal.SIGKILL, exec_id=self.exec_id
            )
        with contextlib.suppress(LinerError):
            await self.tasks.wait(self.namespace, self.container_id, self.exec_id)

    async def _delete(self, started: bool) -> None:
        if started:
            with contextlib.suppress(LinerError):
                state = self.tasks.state(self.namespace, self.container_id, self.exec_id)
                if state.status == TaskStatus.RUNNING:
                    await self._kill()
        try:
            await self.tasks.delete_process(self.namespace, self.container_id, self.exec_id)
        except NotFound:
            pass
        except LinerError as e:
            log.warning("exec not deleted", exec_id=self.exec_id, error=str(e))


class AttachSession:
    """A client on conmon's attach socket of a running container's init process."""

    def __init__(self, tasks: Tasks, namespace: str, container_id: str, sock_path: Path) -> None:
        self.tasks = tasks
        self.namespace = namespace
        self.container_id = container_id
        self.sock_path = sock_path

    async def run(self, streams: Streams) -> Result:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        sock.setblocking(False)
        pumps: list[asyncio.Task[Any]] = []
        try:
            try:
                await loop.sock_connect(sock, str(self.sock_path))
            except OSError as e:
                return Result(None, f"cannot attach to container {self.container_id}: {e}")
            if streams.stdin is not None:
                pumps.append(asyncio.create_task(self._stdin(sock, streams.stdin)))
            if streams.resize is not None:
                pumps.append(asyncio.create_task(self._resize(streams.resize)))
            output = asyncio.create_task(self._output(sock, streams))
            gone = asyncio.create_task(streams.gone.wait())
            await asyncio.wait({output, gone}, return_when=asyncio.FIRST_COMPLETED)
            gone.cancel()
            if not output.done():
                output.cancel()
                return Result(None, "client disconnected")
            exc = output.exception()
            if isinstance(exc, ConnectionClosed):
                return Result(None, "client disconnected")
            if exc is not None:
                return Result(None, str(exc))
            return Result(0)
        finally:
            for pump in pumps:
                pump.cancel()
            for pump in pumps:
                with contextlib.suppress(BaseException):
                    await pump
            sock.close()

    async def _output(self, sock: socket.socket, streams: Streams) -> None:
        loop = asyncio.get_running_loop()
        while True:
            data = await loop.sock_recv(sock, CHUNK + 1)
            if not data:
                return  # conmon closed it: the container exited
            if data[0] == _ATTACH_STDOUT and streams.options.stdout:
                await streams.write(STDOUT, data[1:])
            elif data[0] == _ATTACH_STDERR and streams.options.stderr:
                await streams.write(STDERR, data[1:])

    async def _stdin(self, sock: socket.socket, queue: asyncio.Queue[bytes]) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(OSError):
            while data := await queue.get():
                await loop.sock_sendall(sock, data)
            # conmon closes the container's stdin here unless it was told to leave it open
            # (a container without stdin_once).
            sock.shutdown(socket.SHUT_WR)

    async def _resize(self, queue: asyncio.Queue[tuple[int, int]]) -> None:
        while True:
            width, height = await queue.get()
            with contextlib.suppress(LinerError):
                await self.tasks.resize_pty(self.namespace, self.container_id, width, height)
