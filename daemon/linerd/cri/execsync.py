"""ExecSync: run a command in a container and collect its output, capped.

The output comes through two FIFOs linerd creates and reads itself (non-blocking, on the
event loop). Each stream keeps at most `MAX_OUTPUT` bytes and drops the rest (containerd and
CRI-O were hit by unbounded buffers: CVE-2022-31030, CVE-2022-1708). A process that outlives
its timeout is killed. After the exit, what a backgrounded child still holds open is read for
at most `DRAIN_TIMEOUT` seconds (containerd's `drain_exec_sync_io_timeout`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from linerd.errdefs import LinerError, NotFound
from linerd.local.tasks import Stdio

if TYPE_CHECKING:
    from linerd.local.tasks import Tasks

MAX_OUTPUT = 16 << 20
DRAIN_TIMEOUT = 2.0


@dataclass(frozen=True, slots=True)
class ExecResult:
    stdout: bytes
    stderr: bytes
    exit_code: int
    timed_out: bool = False


class _Reader:
    """Reads one FIFO into a capped buffer until EOF (every writer closed)."""

    def __init__(self, fd: int, loop: asyncio.AbstractEventLoop, cap: int) -> None:
        self.fd = fd
        self.loop = loop
        self.cap = cap
        self.data = bytearray()
        self.done: asyncio.Future[None] = loop.create_future()
        loop.add_reader(fd, self._ready)

    def _ready(self) -> None:
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except BlockingIOError:
                return
            except OSError:
                chunk = b""
            if not chunk:
                self.close()
                return
            room = self.cap - len(self.data)
            if room > 0:
                self.data += chunk[:room]

    def close(self) -> None:
        if self.fd >= 0:
            self.loop.remove_reader(self.fd)
            os.close(self.fd)
            self.fd = -1
        if not self.done.done():
            self.done.set_result(None)


def _make_fifos(directory: Path) -> tuple[Path, Path, int, int]:
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    out, err = directory / "stdout", directory / "stderr"
    os.mkfifo(out, 0o600)
    os.mkfifo(err, 0o600)
    # Our read ends first (O_NONBLOCK opens at once), so the runtime's writer opens too.
    rout = os.open(out, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    rerr = os.open(err, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    return out, err, rout, rerr


async def run(
    tasks: Tasks,
    namespace: str,
    container_id: str,
    process: dict[str, Any],
    scratch: Path,
    *,
    timeout: float | None,
    cap: int = MAX_OUTPUT,
) -> ExecResult:
    exec_id = "sync" + secrets.token_hex(8)
    directory = scratch / exec_id
    loop = asyncio.get_running_loop()
    out, err, rout, rerr = await asyncio.to_thread(_make_fifos, directory)
    readers = [_Reader(rout, loop, cap), _Reader(rerr, loop, cap)]
    added = False
    timed_out = False
    try:
        await tasks.exec(
            namespace,
            container_id,
            exec_id,
            json.dumps(process).encode(),
            Stdio(stdout=str(out), stderr=str(err)),
            direct=True,
        )
        added = True
        await tasks.start(namespace, container_id, exec_id)
        waiting = asyncio.ensure_future(tasks.wait(namespace, container_id, exec_id))
        try:
            info = await asyncio.wait_for(asyncio.shield(waiting), timeout)
        except TimeoutError:
            timed_out = True
            with contextlib.suppress(LinerError):
                await tasks.kill(namespace, container_id, signal.SIGKILL, exec_id=exec_id)
            info = await waiting
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(r.done for r in readers)), DRAIN_TIMEOUT)
        return ExecResult(bytes(readers[0].data), bytes(readers[1].data), info.exit_status,
                          timed_out)  # fmt: skip
    finally:
        for r in readers:
            r.close()
        if added:
            with contextlib.suppress(NotFound, LinerError):
                await tasks.delete_process(namespace, container_id, exec_id)
        await asyncio.to_thread(shutil.rmtree, directory, True)
