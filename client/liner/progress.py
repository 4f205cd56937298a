"""Showing a pull's progress: a live `rich` display on a terminal, plain lines otherwise.

The daemon streams the whole list of blobs with their states at most every 0.1s; both
displays turn those snapshots into per-blob changes. Speeds are measured here, from the first
update that showed the blob downloading.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Protocol

from liner.client import BlobProgress, PullProgress, PushProgress
from liner.format import human_size
from liner.images import kind

if TYPE_CHECKING:
    from rich.progress import TaskID

# States after which a blob's bytes are all there.
_COMPLETE = frozenset({"downloaded", "exists", "unpacking", "unpacked"})


def blob_ref(blob: BlobProgress) -> str:
    """`layer-sha256:...`, `config-sha256:...`: ctr's names for the blobs of a pull."""
    return f"{kind(blob.descriptor.media_type)}-{blob.descriptor.digest}"


def _done(blob: BlobProgress) -> int:
    return blob.descriptor.size if blob.state in _COMPLETE else blob.offset


def speed_text(size: float, seconds: float) -> str:
    """`12.3MB/s`; empty when there is nothing to measure."""
    if seconds <= 0 or size <= 0:
        return ""
    return f"{human_size(size / seconds)}/s"


@dataclass(slots=True)
class _Seen:
    state: str
    started: float | None = None  # monotonic time it was first seen downloading
    start_offset: int = 0


class Display(Protocol):
    def update(self, progress: PullProgress | PushProgress) -> None: ...

    def close(self) -> None: ...


class NoDisplay:
    def update(self, progress: PullProgress | PushProgress) -> None:
        pass

    def close(self) -> None:
        pass


class PlainDisplay:
    """One line per state change of a blob, for logs:

    `layer-sha256:...: downloaded 2.1MB/2.1MB 8.4MB/s`
    """

    def __init__(self, echo: Callable[[str], None], clock: Callable[[], float] = time.monotonic):
        self._echo = echo
        self._clock = clock
        self._seen: dict[str, _Seen] = {}

    def update(self, progress: PullProgress | PushProgress) -> None:
        now = self._clock()
        for blob in progress.blobs:
            digest = blob.descriptor.digest
            seen = self._seen.get(digest)
            if seen is None:
                seen = self._seen[digest] = _Seen(blob.state)
            elif seen.state == blob.state:
                continue
            seen.state = blob.state
            if blob.state == "downloading" and seen.started is None:
                seen.started, seen.start_offset = now, blob.offset
            line = (
                f"{blob_ref(blob)}: {blob.state} "
                f"{human_size(_done(blob))}/{human_size(blob.descriptor.size)}"
            )
            if blob.state == "downloaded" and seen.started is not None:
                speed = speed_text(blob.descriptor.size - seen.start_offset, now - seen.started)
                if speed:
                    line += f" {speed}"
            self._echo(line)

    def close(self) -> None:
        pass


class LiveDisplay:
    """A live table on a terminal: one row per blob with its state, a bar, bytes and speed."""

    def __init__(self, file: IO[str] | None = None, *, force_terminal: bool | None = None):
        # rich only here: importing it takes a third of a quiet or plain pull's start-up.
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TransferSpeedColumn,
        )

        console = Console(file=file, force_terminal=force_terminal, highlight=False)
        self._progress = Progress(
            TextColumn("{task.description}"),
            TextColumn("{task.fields[state]:<11}"),
            BarColumn(bar_width=30),
            DownloadColumn(),
            TransferSpeedColumn(),
            console=console,
            refresh_per_second=8,
            transient=False,
        )
        self._tasks: dict[str, TaskID] = {}
        self._progress.start()

    def update(self, progress: PullProgress | PushProgress) -> None:
        for blob in progress.blobs:
            desc = blob.descriptor
            task = self._tasks.get(desc.digest)
            if task is None:
                label = f"{kind(desc.media_type)}-{desc.digest.partition(':')[2][:12]}"
                task = self._tasks[desc.digest] = self._progress.add_task(
                    f"{label:<21}", total=desc.size, state=blob.state
                )
            self._progress.update(task, completed=_done(blob), state=blob.state)

    def close(self) -> None:
        self._progress.stop()
