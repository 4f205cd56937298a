"""Opening a client's stdio paths (the ctr model: FIFOs the client created and holds open).

Blocking by nature, so everything here runs in worker threads. Opens poll with O_NONBLOCK
instead of blocking in open(2): a blocked open cannot be cancelled, and a client that never
shows up would pin a thread forever.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import time
from dataclasses import dataclass, field
from urllib.parse import urlparse

from linerd.errdefs import DeadlineExceeded, InvalidArgument, NotImplementedYet

_POLL = 0.005
# Errors of _local_path for URIs we cannot serve: recovery skips those targets.
LinerStdioError = (InvalidArgument, NotImplementedYet)


@dataclass(slots=True)
class OpenedStdio:
    """fds handed to the monitor (closed by us once it is spawned) and the daemon's own
    extra ends, which it keeps while the process lives (see `hold_*`)."""

    stdin: int | None = None
    stdout: int | None = None
    stderr: int | None = None
    # Extra ends kept by the daemon: read ends of the stdout/stderr FIFOs (a writer never gets
    # SIGPIPE/EPIPE after the client goes away) and a write end of the stdin FIFO (the process
    # sees EOF only after close_stdin, as with containerd's shim).
    held: list[int] = field(default_factory=list)
    stdin_writer: int | None = None

    def child_fds(self) -> list[int]:
        return [fd for fd in (self.stdin, self.stdout, self.stderr) if fd is not None]

    def close_child_fds(self) -> None:
        for fd in set(self.child_fds()):
            _close(fd)
        self.stdin = self.stdout = self.stderr = None

    def close_held(self) -> None:
        for fd in self.held:
            _close(fd)
        self.held.clear()
        self.close_stdin_writer()

    def close_stdin_writer(self) -> None:
        if self.stdin_writer is not None:
            _close(self.stdin_writer)
            self.stdin_writer = None

    def close_all(self) -> None:
        self.close_child_fds()
        self.close_held()


def _close(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


def _local_path(path: str) -> tuple[str, bool]:
    """(filesystem path, is a file:// log target). Rejects URI schemes we do not serve."""
    if "://" not in path:
        return path, False
    u = urlparse(path)
    if u.scheme == "file":
        return u.path, True
    if u.scheme == "binary":
        raise NotImplementedYet(f"stdio {path!r}: binary:// log drivers are not supported")
    raise InvalidArgument(f"stdio {path!r}: unsupported URI scheme {u.scheme!r}")


def _clear_nonblock(fd: int) -> None:
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_NONBLOCK)


def _is_fifo(path: str) -> bool:
    try:
        return stat.S_ISFIFO(os.stat(path).st_mode)
    except FileNotFoundError:
        # containerd's fifo package opens with O_CREAT; do the same so a client may create its
        # end afterwards.
        os.mkfifo(path, 0o700)
        return True


def _open_writer(path: str, deadline: float) -> tuple[int, int | None]:
    """Open an output target for writing: (fd for the process, extra read end or None)."""
    local, is_file = _local_path(path)
    if is_file or not _is_fifo(local):
        return os.open(local, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640), None
    while True:
        try:
            fd = os.open(local, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            break
        except OSError as e:
            if e.errno != errno.ENXIO:  # ENXIO = no reader yet: the client has not opened it
                raise
        if time.monotonic() >= deadline:
            raise DeadlineExceeded(f"timed out waiting for a reader on {path}")
        time.sleep(_POLL)
    _clear_nonblock(fd)
    held = os.open(local, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    return fd, held


def _open_reader(path: str) -> tuple[int, int | None]:
    """Open the stdin FIFO for reading: (fd for the process, extra write end or None)."""
    local, _ = _local_path(path)
    fd = os.open(local, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    _clear_nonblock(fd)
    writer = None
    if stat.S_ISFIFO(os.fstat(fd).st_mode):
        # Succeeds at once: we are a reader ourselves.
        writer = os.open(local, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    return fd, writer


def open_stdio(stdin: str, stdout: str, stderr: str, timeout: float) -> OpenedStdio:
    """Open the three paths ("" = not wanted); on any error close what was opened."""
    deadline = time.monotonic() + timeout
    res = OpenedStdio()
    try:
        if stdin:
            res.stdin, res.stdin_writer = _open_reader(stdin)
        if stdout:
            res.stdout, held = _open_writer(stdout, deadline)
            if held is not None:
                res.held.append(held)
        if stderr:
            if stderr == stdout:
                res.stderr = res.stdout
            else:
                res.stderr, held = _open_writer(stderr, deadline)
                if held is not None:
                    res.held.append(held)
    except OSError as e:
        res.close_all()
        raise InvalidArgument(f"cannot open stdio: {e}") from e
    except BaseException:
        res.close_all()
        raise
    return res


def reopen_held(stdin: str, stdout: str, stderr: str) -> OpenedStdio:
    """After a daemon restart: take the extra ends again, as far as the FIFOs still exist."""
    res = OpenedStdio()
    for p in {stdout, stderr} - {""}:
        with contextlib.suppress(OSError, LinerStdioError):
            local, is_file = _local_path(p)
            if not is_file and stat.S_ISFIFO(os.stat(local).st_mode):
                res.held.append(os.open(local, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC))
    if stdin:
        with contextlib.suppress(OSError, LinerStdioError):
            local, _ = _local_path(stdin)
            if stat.S_ISFIFO(os.stat(local).st_mode):
                # ENXIO when no reader is left (the process closed or lost its stdin).
                res.stdin_writer = os.open(local, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    return res
