"""Reading a container's log file: the kubelet CRI format conmon writes.

Each line is `<RFC3339Nano time> <stdout|stderr> <P|F> <content>`: F ends a line of the
container's output, P is a part of a longer one (the next entry continues it). linerd keeps
the output of a task created without stdio in `<state>/logs/<namespace>/<id>.log`, capped in
size (conmon truncates the file and starts again), so a follower watches for the file
shrinking or being replaced.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO


@dataclass(frozen=True, slots=True)
class Entry:
    time: str
    stream: str  # "stdout" or "stderr"
    partial: bool  # P: the line goes on in the next entry
    content: bytes

    def text(self) -> bytes:
        """What the container wrote: the content, and its newline unless partial."""
        return self.content if self.partial else self.content + b"\n"


def log_path(state: Path, namespace: str, container_id: str) -> Path:
    return state / "logs" / namespace / f"{container_id}.log"


def parse(line: bytes) -> Entry:
    """One line without its newline. A line not in the format is kept whole, as stdout."""
    parts = line.split(b" ", 3)
    if len(parts) >= 3 and parts[1] in (b"stdout", b"stderr") and parts[2] in (b"P", b"F"):
        content = parts[3] if len(parts) == 4 else b""
        return Entry(
            parts[0].decode(errors="replace"), parts[1].decode(), parts[2] == b"P", content
        )
    return Entry("", "stdout", False, line)


def _complete_lines(data: bytes) -> tuple[list[bytes], int]:
    """The newline-ended lines of `data` and how many bytes they take (a last line without
    its newline is still being written)."""
    end = data.rfind(b"\n") + 1
    return (data[:end].split(b"\n")[:-1] if end else []), end


def last_lines(entries: Iterable[Entry], n: int | None) -> list[Entry]:
    """The entries of the last `n` lines of output (a line: P entries up to an F); all if
    `n` is None."""
    if n is None:
        return list(entries)
    if n <= 0:
        return []
    lines: deque[list[Entry]] = deque(maxlen=n)
    current: list[Entry] = []
    for entry in entries:
        current.append(entry)
        if not entry.partial:
            lines.append(current)
            current = []
    if current:  # an unfinished line counts as the last one
        lines.append(current)
    return [e for line in lines for e in line]


class Follower:
    """Reads a log file from an offset on, one `poll()` at a time.

    Follows the file across truncation (it shrank: read it again from the start) and across
    replacement (another inode at the path: open the new one from its start).
    """

    def __init__(self, path: Path, offset: int = 0) -> None:
        self.path = path
        self._file: BinaryIO | None = None
        self._inode = 0
        self._offset = offset

    def _open(self) -> BinaryIO | None:
        try:
            f = open(self.path, "rb")  # noqa: SIM115 - held across polls
        except FileNotFoundError:
            return None
        self._inode = os.fstat(f.fileno()).st_ino
        return f

    def poll(self) -> list[Entry]:
        """The complete entries written since the last poll."""
        if self._file is None:
            self._file = self._open()
            if self._file is None:
                return []
        try:
            current = os.stat(self.path)
        except FileNotFoundError:
            current = None
        size = os.fstat(self._file.fileno()).st_size
        entries: list[Entry] = []
        if current is not None and current.st_ino != self._inode:
            # Replaced: what is left of the old file first, then the new one from its start.
            entries += self._read()
            self._file.close()
            self._file, self._offset = self._open(), 0
            if self._file is None:
                return entries
        elif size < self._offset:
            self._offset = 0  # truncated: the capped file started again
        return entries + self._read()

    def _read(self) -> list[Entry]:
        assert self._file is not None
        self._file.seek(self._offset)
        lines, used = _complete_lines(self._file.read())
        self._offset += used
        return [parse(line) for line in lines]

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def read_log(path: Path, tail: int | None = None) -> tuple[list[Entry], int]:
    """The file's complete entries (the last `tail` lines' worth) and the offset after them
    (where a follower goes on)."""
    with open(path, "rb") as f:
        lines, used = _complete_lines(f.read())
    return last_lines((parse(line) for line in lines), tail), used


def entries_text(entries: Iterable[Entry]) -> Iterator[tuple[str, bytes]]:
    """(stream, bytes to write) per entry."""
    for entry in entries:
        yield entry.stream, entry.text()
