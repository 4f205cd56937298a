"""Network namespaces pinned at files (containerd's way), and running code inside them.

A pod's network namespace must outlive every process in it (CNI configures it before the pause
process starts, and DEL runs after it died), so it is pinned by bind-mounting its nsfs file onto
an empty file `<dir>/cni-<uuid>`. That file is what CNI_NETNS and the OCI spec point at.

Namespaces are per thread in Linux. Entering one (unshare or setns) always happens on a fresh
thread that ends right after, so no other thread of the daemon (the event loop, the worker pool)
ever runs in a pod's namespace. A child process forked from such a thread, or a socket created
there, stays in the namespace for good: that is how a server is started in a pod and how
port-forward dials into one.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import os
import socket
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from linerd.errdefs import FailedPrecondition, NotFound
from linerd.mounts import MNT_DETACH, MS_BIND, _lib, _sys_mount

CLONE_NEWNET = 0x40000000
PREFIX = "cni-"

T = TypeVar("T")

_nslib: ctypes.CDLL | None = None


def _ns() -> ctypes.CDLL:
    global _nslib
    if _nslib is None:
        lib = ctypes.CDLL(None, use_errno=True)
        lib.unshare.argtypes = [ctypes.c_int]
        lib.unshare.restype = ctypes.c_int
        lib.setns.argtypes = [ctypes.c_int, ctypes.c_int]
        lib.setns.restype = ctypes.c_int
        _nslib = lib
    return _nslib


def _errno_error(what: str) -> OSError:
    err = ctypes.get_errno()
    return OSError(err, f"{what}: {os.strerror(err)}")


def _on_fresh_thread(fn: Callable[[], T]) -> T:
    """Run `fn` on a new thread that ends afterwards, taking any namespace it entered along."""
    box: list[T] = []
    failure: list[BaseException] = []

    def target() -> None:
        try:
            box.append(fn())
        except BaseException as e:  # handed to the caller's thread below
            failure.append(e)

    thread = threading.Thread(target=target, name="linerd-netns", daemon=True)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return box[0]


def _pin_new(path: Path) -> None:
    if _ns().unshare(CLONE_NEWNET) != 0:
        raise _errno_error("unshare(CLONE_NEWNET)")
    own = f"/proc/{os.getpid()}/task/{threading.get_native_id()}/ns/net"
    _sys_mount(own, str(path), None, MS_BIND, None)


def create(directory: Path) -> Path:
    """A new, empty network namespace pinned at `directory/cni-<uuid>`; returns that path.

    Blocking (a thread start and two syscalls): call it through asyncio.to_thread.
    """
    directory.mkdir(parents=True, exist_ok=True, mode=0o711)
    path = directory / f"{PREFIX}{uuid.uuid4()}"
    os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444))
    try:
        _on_fresh_thread(lambda: _pin_new(path))
    except OSError as e:
        path.unlink(missing_ok=True)
        raise FailedPrecondition(f"create network namespace {path}: {e.strerror or e}") from None
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path


def remove(path: Path) -> None:
    """Unpin and delete a namespace file. Idempotent: a missing or unmounted file is fine.

    The namespace itself lives on while a process still runs in it or holds it open.
    """
    target = os.fsencode(path)
    # Loop: a file pinned twice (a crash between two attempts) has stacked mounts.
    for _ in range(16):
        if _lib().umount2(target, MNT_DETACH) == 0:
            continue
        err = ctypes.get_errno()
        if err in (errno.EINVAL, errno.ENOENT):  # not (or no longer) a mount point; gone
            break
        raise FailedPrecondition(f"unmount network namespace {path}: {os.strerror(err)}")
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as e:
        raise FailedPrecondition(f"remove network namespace {path}: {e.strerror}") from None


def is_pinned(path: Path) -> bool:
    """True if `path` holds a namespace (its inode lives on nsfs, like our own ns files)."""
    try:
        return os.stat(path).st_dev == os.stat("/proc/self/ns/net").st_dev
    except OSError:
        return False


def list_pinned(directory: Path) -> list[Path]:
    """The `cni-*` files in `directory`, pinned or not (for reaping orphans at start-up)."""
    try:
        return sorted(p for p in directory.iterdir() if p.name.startswith(PREFIX))
    except FileNotFoundError:
        return []


def run_in(path: Path, fn: Callable[[], T]) -> T:
    """Call `fn` on a fresh thread inside the namespace pinned at `path`; return its result.

    A process `fn` spawns and a socket it creates belong to that namespace from then on.
    Blocking: from the event loop use `arun_in`.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotFound(f"network namespace {path} does not exist") from None

    def enter_and_call() -> T:
        if _ns().setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            if err == errno.EINVAL:  # the file is not (or no longer) a pinned namespace
                raise NotFound(f"{path} is not a network namespace")
            raise FailedPrecondition(f"enter network namespace {path}: {os.strerror(err)}")
        return fn()

    try:
        return _on_fresh_thread(enter_and_call)
    finally:
        os.close(fd)


async def arun_in(path: Path, fn: Callable[[], T]) -> T:
    return await asyncio.to_thread(run_in, path, fn)


def socket_in(
    path: Path,
    family: socket.AddressFamily = socket.AF_INET,
    kind: socket.SocketKind = socket.SOCK_STREAM,
) -> socket.socket:
    """A new socket in the namespace at `path`; connect or bind it from any thread."""
    return run_in(path, lambda: socket.socket(family, kind))


async def asocket_in(
    path: Path,
    family: socket.AddressFamily = socket.AF_INET,
    kind: socket.SocketKind = socket.SOCK_STREAM,
) -> socket.socket:
    return await asyncio.to_thread(socket_in, path, family, kind)
