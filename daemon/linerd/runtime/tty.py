"""Relay between conmon's attach socket (a TTY process) and the client's stdin/stdout FIFOs.

One thread per TTY process: TTY tasks are interactive and few, and blocking I/O keeps the
relay simple. The relay dies with the daemon; the container and its pty (held by conmon) do
not, so a restarted daemon reconnects.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import threading
import time
from pathlib import Path

from linerd.errdefs import DeadlineExceeded
from linerd.runtime.stdio import OpenedStdio, open_stdio

_STDOUT, _STDERR = 2, 3  # conmon attach frames: 1 byte stream id + data


class TtyRelay:
    def __init__(self, sock_path: Path, stdin: str, stdout: str) -> None:
        self.sock_path = sock_path
        self.stdin = stdin
        self.stdout = stdout
        self._sock: socket.socket | None = None
        self._io: OpenedStdio | None = None
        self._wake_r, self._wake_w = os.pipe()
        self._stdin_open = bool(stdin)
        self._stop = False
        self._thread: threading.Thread | None = None

    def start(self, timeout: float) -> None:
        """Connect to the attach socket, open the client's FIFOs, start relaying (blocking)."""
        deadline = time.monotonic() + timeout
        self.connect(timeout)
        try:
            self.open_fifos(max(0.1, deadline - time.monotonic()))
        except BaseException:
            # Nobody would drain the socket: conmon's writes to it must not pile up.
            self.disconnect()
            raise
        self.run()

    def open_fifos(self, timeout: float) -> None:
        """Open the client's stdin/stdout FIFOs (at once for an exec: the client's stdin writer
        may open from Exec on, as with containerd's shim). Idempotent."""
        if self._io is None:
            self._io = open_stdio(self.stdin, self.stdout, "", timeout)

    def connect(self, timeout: float) -> None:
        """Connect to conmon's attach socket (retrying until it exists). Idempotent."""
        if self._sock is not None:
            return
        deadline = time.monotonic() + timeout
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        while True:
            try:
                sock.connect(str(self.sock_path))
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if time.monotonic() >= deadline:
                    sock.close()
                    raise DeadlineExceeded(f"attach socket {self.sock_path} not ready") from None
                time.sleep(0.005)
        self._sock = sock

    def disconnect(self) -> None:
        if self._sock is not None and self._thread is None:
            self._sock.close()
            self._sock = None

    def run(self) -> None:
        """Start the relay thread (after connect and open_fifos)."""
        if self._sock is None or self._io is None:
            raise RuntimeError("relay not connected")
        self._thread = threading.Thread(target=self._run, name="tty-relay", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        assert self._sock is not None and self._io is not None
        sock, io = self._sock, self._io
        out = io.stdout
        try:
            while not self._stop:
                fds: list[int] = [sock.fileno(), self._wake_r]
                if self._stdin_open and io.stdin is not None:
                    fds.append(io.stdin)
                # poll, not select: the daemon's fds may pass FD_SETSIZE (1024)
                poller = select.poll()
                for fd in fds:
                    poller.register(fd, select.POLLIN)
                r = [fd for fd, _ in poller.poll()]
                if self._wake_r in r:
                    os.read(self._wake_r, 64)
                if sock.fileno() in r:
                    data = sock.recv(65536)
                    if not data:
                        break  # conmon is gone: all output has been relayed
                    if data[0] in (_STDOUT, _STDERR) and out is not None:
                        try:
                            _write_all(out, data[1:])
                        except OSError:
                            out = None  # client gone: keep draining so the pty never blocks
                if io.stdin is not None and self._stdin_open and io.stdin in r:
                    chunk = os.read(io.stdin, 8192)
                    if chunk:
                        with contextlib.suppress(OSError):
                            sock.sendall(chunk)
        except OSError:
            pass
        finally:
            io.close_all()

    def drain(self, timeout: float) -> None:
        """Wait for the relay to copy everything (it ends when conmon closes the socket)."""
        if self._thread is not None:
            self._thread.join(timeout)

    def close_stdin(self) -> None:
        self._stdin_open = False
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def stop(self) -> None:
        self._stop = True
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(2.0)
        if self._sock is not None:
            self._sock.close()
        if self._thread is None and self._io is not None:
            self._io.close_all()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._wake_r = self._wake_w = -1


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]
