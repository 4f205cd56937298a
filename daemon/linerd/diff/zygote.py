"""Unpack workers forked from a warm process instead of started from scratch.

A new Python with the worker's modules takes ~0.1 s of CPU to start, and over 0.25 s of wall
time while a pull keeps both cores busy: the worker of a pull's largest layer began that late
and finished that late. The zygote imports those modules once; a worker is then a fork of it
(a few ms). linerd starts the zygote with the first worker and stops it once no worker has
been alive for IDLE seconds (never before: its workers die with it, and a staged layer's
worker may wait minutes for its parent layer to be unpacked).

    python -m linerd.diff.zygote <socket fd>

The zygote reads requests from its end of a SEQPACKET socket pair, one per worker: the pickled
arguments of `linerd.diff.worker.main` after the control fd, with four fds (stdin, stdout,
stderr, control). It forks a worker and answers with the worker's pid and a pidfd of it.
Workers are reaped by the kernel (SIGCHLD ignored). At EOF (linerd closed its end or died)
the zygote ends; its workers get SIGKILL from their parent-death signal.
"""

from __future__ import annotations

import contextlib
import gc
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence

# Long enough to span a burst of pulls (kubelet pulls one image after another; the gaps
# between one pull's last worker and the next's first were 4-11 s in the bench's (a) on a
# loaded machine, including its cleanups), short enough not to keep its ~11 MB PSS for long
# after: a restart costs ~0.1 s of CPU (0.15-0.9 s of wall time before the first fork on a
# loaded machine, 0.01-0.13 s for a warm one).
IDLE = 10.0
_MAX_REQUEST = 1 << 16


class ZygoteError(OSError):
    """No worker could be forked (the caller may start one the slow way)."""


class Zygote:
    """linerd's side: forks workers through a zygote, started on demand. Thread-safe."""

    def __init__(self, idle: float = IDLE) -> None:
        self._idle = idle
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._timer: threading.Timer | None = None
        self._alive = 0  # workers forked and not yet reported ended

    def spawn(self, args: Sequence[str], fds: Sequence[int]) -> tuple[int, int]:
        """Fork a worker given `args` and (stdin, stdout, stderr, control) `fds`; returns its
        (pid, pidfd). The fds stay the caller's to close; the caller calls `ended` once the
        worker has. Blocking."""
        request = pickle.dumps(list(args))
        with self._lock:
            self._disarm()
            # A zygote that died (or was killed) since its last fork fails the first try.
            for _ in range(2):
                answer = self._ask(request, fds)
                if answer is not None:
                    self._alive += 1
                    return answer
                self._stop()
            raise ZygoteError("the unpack zygote did not answer")

    def ended(self) -> None:
        """One of the workers has ended: with none left, the idle countdown starts."""
        with self._lock:
            self._alive -= 1
            if not self._alive and self._sock is not None:
                self._disarm()
                self._timer = threading.Timer(self._idle, self._stop_if_idle)
                self._timer.daemon = True
                self._timer.start()

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _stop_if_idle(self) -> None:
        with self._lock:
            if not self._alive:
                self._stop()

    def _ask(self, request: bytes, fds: Sequence[int]) -> tuple[int, int] | None:
        try:
            sock = self._sock or self._start()
            socket.send_fds(sock, [request], list(fds))
            msg, got, _, _ = socket.recv_fds(sock, 64, 1)
        except OSError:
            return None
        if not msg or len(got) != 1:
            for fd in got:
                os.close(fd)
            return None
        return int(msg), got[0]

    def _start(self) -> socket.socket:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with theirs:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "linerd.diff.zygote", str(theirs.fileno())],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                pass_fds=(theirs.fileno(),),
            )
        self._sock = ours
        return ours

    def _stop(self) -> None:
        sock, self._sock = self._sock, None
        proc, self._proc = self._proc, None
        if sock is not None:
            sock.close()  # EOF: the zygote ends
        if proc is not None:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def close(self) -> None:
        """Stop the zygote now, and with it its workers (at shutdown). A later spawn starts
        another."""
        with self._lock:
            self._disarm()
            self._stop()

    @property
    def pid(self) -> int | None:
        """The zygote's pid while it runs (for tests)."""
        return None if self._proc is None else self._proc.pid


# The one linerd uses (started with the first worker).
ZYGOTE = Zygote()


def main(argv: list[str]) -> int:
    sock = socket.socket(fileno=int(argv[0]))
    from linerd import leancode

    leancode.install()  # as linerd's own code (linerd.main)
    from linerd.diff import worker  # with what it imports: what each fork would load

    worker.preload()
    gc.freeze()  # the imported objects stay shared with the workers: no collection touches them
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps the workers
    while True:
        msg, fds, _, _ = socket.recv_fds(sock, _MAX_REQUEST, 4)
        if not msg:
            return 0
        args = pickle.loads(msg)  # before the fork: a child must never run this loop
        if len(fds) != 4:
            for fd in fds:
                os.close(fd)
            sock.send(b"")
            continue
        pid = os.fork()
        if pid == 0:
            _worker(sock, args, fds, worker.main)
        for fd in fds:
            os.close(fd)
        pidfd = os.pidfd_open(pid)
        try:
            socket.send_fds(sock, [str(pid).encode()], [pidfd])
        finally:
            os.close(pidfd)


def _worker(
    sock: socket.socket, args: list[str], fds: list[int], work: Callable[[list[str]], int]
) -> None:
    """In the forked child: become the worker, never return."""
    code = 1
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        sock.close()
        stdin, stdout, stderr, control = fds
        for fd, std in ((stdin, 0), (stdout, 1), (stderr, 2)):
            os.dup2(fd, std)
            os.close(fd)
        code = work([*args, str(control)])
    except BaseException:
        with contextlib.suppress(BaseException):
            import traceback

            traceback.print_exc()
    finally:
        with contextlib.suppress(BaseException):
            sys.stderr.flush()
        os._exit(code)


if __name__ == "__main__":
    from linerd.diff.zygote import main as importable_main

    sys.exit(importable_main(sys.argv[1:]))
