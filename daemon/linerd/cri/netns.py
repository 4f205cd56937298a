"""A pod's namespaces pinned at files (containerd's netns, CRI-O's pinns), and running code
inside them.

A pod's network namespace must outlive every process in it (CNI configures it before any of
the pod's processes starts, and DEL runs after the last died), so it is pinned by bind-mounting
its nsfs file onto an empty file `<dir>/cni-<uuid>`. That file is what CNI_NETNS and the OCI
specs point at. `create_pod` pins the pod's IPC and UTS namespaces the same way
(`ipc-<uuid>`, `uts-<uuid>`, the hostname set inside), so a pod needs no pause process to hold
them (CRI-O's `drop_infra_ctr`); `apply_sysctls` writes the pod's sysctls inside them.

Namespaces are per thread in Linux. Entering one (unshare or setns) always happens on a fresh
thread that ends right after, so no other thread of the daemon (the event loop, the worker pool)
ever runs in a pod's namespace. A child process forked from such a thread, or a socket created
there, stays in the namespace for good: that is how a server is started in a pod and how
port-forward dials into one.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import fcntl
import os
import socket
import struct
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

from linerd.errdefs import FailedPrecondition, InvalidArgument, LinerError, NotFound
from linerd.mounts import MNT_DETACH, MS_BIND, _lib, _sys_mount

CLONE_NEWNET = 0x40000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUTS = 0x04000000
PREFIX = "cni-"
# A pod's pinnable namespaces: kind -> (clone flag, file prefix, name under /proc/<pid>/ns).
NET, IPC, UTS = "net", "ipc", "uts"
KINDS: dict[str, tuple[int, str]] = {
    NET: (CLONE_NEWNET, PREFIX),
    IPC: (CLONE_NEWIPC, "ipc-"),
    UTS: (CLONE_NEWUTS, "uts-"),
}
PREFIXES = tuple(prefix for _, prefix in KINDS.values())
# runc's list of the IPC namespace's sysctls (besides fs.mqueue.*).
_IPC_SYSCTLS = frozenset(
    {
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
    }
)

T = TypeVar("T")

# <linux/sockios.h>, <net/if.h>: an interface's flags by name (struct ifreq: the name in 16
# bytes, then a union of which ifr_flags is the first short).
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
_IFREQ = struct.Struct("16sh22x")

_nslib: ctypes.CDLL | None = None


def _ns() -> ctypes.CDLL:
    global _nslib
    if _nslib is None:
        lib = ctypes.CDLL(None, use_errno=True)
        lib.unshare.argtypes = [ctypes.c_int]
        lib.unshare.restype = ctypes.c_int
        lib.setns.argtypes = [ctypes.c_int, ctypes.c_int]
        lib.setns.restype = ctypes.c_int
        lib.sethostname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
        lib.sethostname.restype = ctypes.c_int
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


def create(directory: Path) -> Path:
    """A new, empty network namespace pinned at `directory/cni-<uuid>`; returns that path.
    Blocking: call it through asyncio.to_thread."""
    return create_pod(directory, [NET])[NET]


def create_pod(directory: Path, kinds: Sequence[str], hostname: str = "") -> dict[str, Path]:
    """New namespaces of `kinds` (NET, IPC, UTS), made together on one fresh thread, the
    hostname set in the UTS one, each pinned at `directory/<prefix><uuid>` (one uuid per pod);
    returns kind -> path. On failure nothing is left. Blocking: call through a thread."""
    if not kinds:
        return {}
    directory.mkdir(parents=True, exist_ok=True, mode=0o711)
    pod = uuid.uuid4()
    paths = {kind: directory / f"{KINDS[kind][1]}{pod}" for kind in kinds}
    flags = 0
    for kind in kinds:
        flags |= KINDS[kind][0]

    def pin() -> None:
        if _ns().unshare(flags) != 0:
            raise _errno_error(f"unshare({'|'.join(kinds)})")
        if UTS in paths and hostname:
            name = hostname.encode()
            if _ns().sethostname(name, len(name)) != 0:
                raise _errno_error("sethostname")
        own = f"/proc/{os.getpid()}/task/{threading.get_native_id()}/ns"
        for kind, path in paths.items():
            _sys_mount(f"{own}/{kind}", str(path), None, MS_BIND, None)

    try:
        for path in paths.values():
            os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444))
        _on_fresh_thread(pin)
    except BaseException as e:
        for path in paths.values():
            with contextlib.suppress(LinerError):
                remove(path)
        if isinstance(e, OSError):
            raise FailedPrecondition(f"pin the pod's namespaces: {e.strerror or e}") from None
        raise
    return paths


_SWAP = str.maketrans("./", "/.")


def _dotted(key: str) -> str:
    """A sysctl name in the dotted form (`net/ipv4/conf/eth0.100/x` -> `net.ipv4.conf.eth0/100.x`:
    the first separator tells which form kubelet sent)."""
    dot, slash = key.find("."), key.find("/")
    return key.translate(_SWAP) if slash != -1 and (dot == -1 or slash < dot) else key


def sysctl_kind(key: str) -> str:
    """The namespace a sysctl lives in (NET, IPC, UTS), as runc decides; "" if none."""
    key = _dotted(key)
    if key.startswith("net."):
        return NET
    if key in _IPC_SYSCTLS or key.startswith("fs.mqueue."):
        return IPC
    if key in ("kernel.hostname", "kernel.domainname"):
        return UTS
    return ""


def check_sysctls(sysctls: Mapping[str, str], kinds: Sequence[str]) -> None:
    """Refuse what runc refuses: a sysctl of no namespace, or of one the pod shares with the
    host (`kinds` are the pod's own)."""
    for key in sysctls:
        kind = sysctl_kind(key)
        if not kind:
            raise InvalidArgument(f"sysctl {key!r} is not in a separate kernel namespace")
        if kind not in kinds:
            raise InvalidArgument(f"sysctl {key!r} is not allowed in the host's {kind} namespace")


def apply_sysctls(paths: Mapping[str, Path], sysctls: Mapping[str, str]) -> None:
    """Write `sysctls` inside the pinned namespaces `paths` (kind -> file), on a fresh thread
    that enters them: /proc/sys resolves a namespaced sysctl by the caller's own namespace.
    Call `check_sysctls` first. Blocking: call through a thread."""
    if not sysctls:
        return
    needed = {sysctl_kind(k) for k in sysctls}
    fds = {kind: os.open(paths[kind], os.O_RDONLY | os.O_CLOEXEC) for kind in needed}

    def enter_and_write() -> None:
        for kind, fd in fds.items():
            if _ns().setns(fd, KINDS[kind][0]) != 0:
                raise _errno_error(f"enter the pod's {kind} namespace")
        for key, value in sysctls.items():
            name = _dotted(key).translate(_SWAP)
            try:
                with open(f"/proc/sys/{name}", "w") as f:
                    f.write(value)
            except OSError as e:
                raise InvalidArgument(f"sysctl {key}={value}: {e.strerror or e}") from None

    try:
        _on_fresh_thread(enter_and_write)
    except OSError as e:
        raise FailedPrecondition(f"set the pod's sysctls: {e.strerror or e}") from None
    finally:
        for fd in fds.values():
            os.close(fd)


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
        raise FailedPrecondition(f"unmount namespace {path}: {os.strerror(err)}")
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as e:
        raise FailedPrecondition(f"remove namespace {path}: {e.strerror}") from None


_nsfs_dev: int | None = None


def is_pinned(path: Path | str) -> bool:
    """True if `path` holds a namespace (its inode lives on nsfs, like our own ns files)."""
    global _nsfs_dev
    try:
        if _nsfs_dev is None:
            _nsfs_dev = os.stat("/proc/self/ns/net").st_dev
        return os.stat(path).st_dev == _nsfs_dev
    except OSError:
        return False


def list_pinned(directory: Path) -> list[Path]:
    """The `cni-*`, `ipc-*` and `uts-*` files in `directory`, pinned or not (for reaping
    orphans at start-up)."""
    try:
        return sorted(p for p in directory.iterdir() if p.name.startswith(PREFIXES))
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


def _set_up(ifname: str) -> None:
    """Set `ifname` of the calling thread's network namespace up (if it is not already)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        name = ifname.encode()
        _, flags = _IFREQ.unpack(fcntl.ioctl(s, SIOCGIFFLAGS, _IFREQ.pack(name, 0)))
        if not flags & IFF_UP:
            fcntl.ioctl(s, SIOCSIFFLAGS, _IFREQ.pack(name, flags | IFF_UP))


def loopback_up(path: Path) -> None:
    """Set `lo` up in the network namespace pinned at `path`: what the CNI `loopback` plugin
    does on ADD (the kernel gives lo 127.0.0.1/8 and ::1 as it comes up), without a plugin
    process. Raises FailedPrecondition naming the cause when it cannot. Blocking."""
    try:
        run_in(path, lambda: _set_up("lo"))
    except OSError as e:
        raise FailedPrecondition(
            f"set lo up in network namespace {path}: {e.strerror or e}"
        ) from None


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
