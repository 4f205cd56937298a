"""A blob being written into an ingest file, readable while its bytes arrive.

Used to unpack a layer while it downloads (daemon-side pulls) or while a client writes it
(prestaging for client-side pulls like ctr's).
"""

from __future__ import annotations

import asyncio
import io
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from linerd.errdefs import Aborted

T = TypeVar("T")

# Readers of live blobs wait for bytes that writers on the event loop hand to the default
# executor: were they in the default executor too (6 threads on 2 cores), a few of them
# could take every thread and wait forever. Threads start on demand.
_READERS = ThreadPoolExecutor(max_workers=64, thread_name_prefix="live-reader")


async def in_reader_thread(fn: Callable[[], T]) -> T:
    """Run blocking `fn`, which may read live blobs, in a thread of their own pool."""
    return await asyncio.get_running_loop().run_in_executor(_READERS, fn)


class LiveBlob:
    """The writer (on the event loop) reports growth; a reader (in an unpack thread) blocks
    until the bytes it needs are there. The reader does not check the digest: whoever uses
    what it read checks the commit's (`committed`) before trusting the result. The file is
    only ever appended to while a LiveBlob follows it (a writer that starts over ends it)."""

    def __init__(self, path: Path, size: int, total: int = 0) -> None:
        self.path = path
        self._cond = threading.Condition()
        self._size = size
        self._total = total  # the writer's announced size (0: unknown)
        self._done = False
        self._error: BaseException | None = None
        self._digest = ""
        # Called once the writer has written `total` bytes or is done (`when_written`).
        self._on_written: list[Callable[[], None]] | None = []

    def grew(self, size: int) -> None:
        with self._cond:
            self._size = size
            self._cond.notify_all()
            ready = self._written_locked() if self._total and size >= self._total else None
        _call(ready)

    def finish(self, error: BaseException | None = None, digest: str = "") -> None:
        """The writer is done: committed (no error; `digest`, the one the commit verified, if
        it did) or not. The first call counts."""
        with self._cond:
            if not self._done:
                self._done, self._error, self._digest = True, error, digest
            self._cond.notify_all()
            ready = self._written_locked()
        _call(ready)

    def when_written(self, fn: Callable[[], None]) -> None:
        """Call `fn` (in the writer's thread, or in this one if it is so already) once the
        writer's last byte is in the file (its announced total) or it is done. A reader far
        behind learns of it only when it catches up: a worker reading through a full pipe is
        told here instead (linerd.diff.worker's yielding)."""
        with self._cond:
            if self._on_written is not None:
                self._on_written.append(fn)
                if not (self._done or (self._total and self._size >= self._total)):
                    return
                ready = self._written_locked()
            else:
                ready = [fn]
        _call(ready)

    def _written_locked(self) -> list[Callable[[], None]] | None:
        ready, self._on_written = self._on_written, None
        return ready

    def committed(self) -> str:
        """Wait for the writer to be done: the digest its commit verified of the bytes the
        file holds, or "" if it did not commit. Blocking."""
        with self._cond:
            while not self._done:
                self._cond.wait()
            return self._digest if self._error is None else ""

    def open(self) -> LiveReader:
        """Raises FileNotFoundError once the download has committed the file away."""
        return LiveReader(self, open(self.path, "rb"))


def _call(fns: list[Callable[[], None]] | None) -> None:
    for fn in fns or ():
        fn()


class LiveReader(io.RawIOBase):
    def __init__(self, blob: LiveBlob, file: BinaryIO) -> None:
        self._blob = blob
        self._file = file
        self._pos = 0
        self.when_written = blob.when_written

    def readable(self) -> bool:
        return True

    def _available(self) -> int:
        """Bytes readable now, waiting for some; 0 at the end of the blob."""
        blob = self._blob
        with blob._cond:
            while self._pos >= blob._size and not blob._done:
                blob._cond.wait()
            if blob._error is not None:
                raise Aborted(f"download of the layer failed: {blob._error}")
            return blob._size - self._pos

    def readinto(self, buffer: Any) -> int:
        available = self._available()
        if available <= 0:
            return 0
        n = self._file.readinto(memoryview(buffer)[:available])
        self._pos += n or 0
        return n or 0

    def splice_to(self, fd: int) -> None:
        """Copy the rest of the blob, as it arrives, into the pipe `fd` inside the kernel: no
        bytes pass through Python, whose GIL the event loop receiving them needs."""
        src = self._file.fileno()
        while (available := self._available()) > 0:
            n = os.splice(src, fd, available, offset_src=self._pos)
            if not n:  # the file is shorter than its writer reported
                raise Aborted("the layer's data ended early")
            self._pos += n

    def close(self) -> None:
        self._file.close()
        super().close()
