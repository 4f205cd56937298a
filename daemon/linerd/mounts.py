"""Mounting API mounts (bind and overlay) with mount(2) and umount2(2), through ctypes.

Calling the syscalls directly instead of spawning util-linux's mount(8) saves a fork+exec per
mount (several ms each on a task's create and delete). Options are split as mount(8) splits
them: flag words (ro, nosuid, ...) become MS_* flags, propagation words a second call, and
everything else (overlay's lowerdir=..., index=off) the data string.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from linerd.core.types import Mount
from linerd.errdefs import FailedPrecondition, InvalidArgument

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_SYNCHRONOUS = 0x10
MS_REMOUNT = 0x20
MS_MANDLOCK = 0x40
MS_DIRSYNC = 0x80
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_BIND = 0x1000
MS_REC = 0x4000
MS_UNBINDABLE = 1 << 17
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24
MNT_DETACH = 2

# word -> (flags to clear, flags to set), as mount(8) reads them.
_FLAGS: dict[str, tuple[int, int]] = {
    "defaults": (0, 0),
    "ro": (0, MS_RDONLY),
    "rw": (MS_RDONLY, 0),
    "nosuid": (0, MS_NOSUID),
    "suid": (MS_NOSUID, 0),
    "nodev": (0, MS_NODEV),
    "dev": (MS_NODEV, 0),
    "noexec": (0, MS_NOEXEC),
    "exec": (MS_NOEXEC, 0),
    "sync": (0, MS_SYNCHRONOUS),
    "async": (MS_SYNCHRONOUS, 0),
    "dirsync": (0, MS_DIRSYNC),
    "mand": (0, MS_MANDLOCK),
    "nomand": (MS_MANDLOCK, 0),
    "noatime": (0, MS_NOATIME),
    "atime": (MS_NOATIME, 0),
    "nodiratime": (0, MS_NODIRATIME),
    "diratime": (MS_NODIRATIME, 0),
    "relatime": (0, MS_RELATIME),
    "norelatime": (MS_RELATIME, 0),
    "strictatime": (0, MS_STRICTATIME),
    "nostrictatime": (MS_STRICTATIME, 0),
    "bind": (0, MS_BIND),
    "rbind": (0, MS_BIND | MS_REC),
}
_PROPAGATION: dict[str, int] = {
    "private": MS_PRIVATE,
    "rprivate": MS_PRIVATE | MS_REC,
    "shared": MS_SHARED,
    "rshared": MS_SHARED | MS_REC,
    "slave": MS_SLAVE,
    "rslave": MS_SLAVE | MS_REC,
    "unbindable": MS_UNBINDABLE,
    "runbindable": MS_UNBINDABLE | MS_REC,
}
# Per-mount flags a bind remount must repeat, or the kernel clears them (statvfs f_flag bits).
_KEEP_ON_REMOUNT = (
    (os.ST_NOSUID, MS_NOSUID),
    (os.ST_NODEV, MS_NODEV),
    (os.ST_NOEXEC, MS_NOEXEC),
    (os.ST_NOATIME, MS_NOATIME),
    (os.ST_NODIRATIME, MS_NODIRATIME),
    (os.ST_RELATIME, MS_RELATIME),
)


_OCTAL = re.compile(r"\\([0-7]{3})")


def unescape_mountinfo(field: str) -> str:
    """A path of /proc/self/mountinfo, where the kernel writes space, tab, newline and
    backslash as \\ooo. Most have none: this runs for every line of a node's mountinfo."""
    if "\\" not in field:
        return field
    return _OCTAL.sub(lambda m: chr(int(m[1], 8)), field)


def escape_mountinfo(path: str) -> str:
    """`path` as mountinfo writes it (to find its lines without parsing the others)."""
    for char in "\\ \t\n":
        path = path.replace(char, f"\\{ord(char):03o}")
    return path


@dataclass(frozen=True, slots=True)
class Parsed:
    flags: int
    propagation: int
    data: str


def parse_options(options: Sequence[str]) -> Parsed:
    """Split mount options into MS_* flags, a propagation change and the data string."""
    flags = propagation = 0
    data: list[str] = []
    for option in options:
        if option in _FLAGS:
            clear, set_ = _FLAGS[option]
            flags = (flags & ~clear) | set_
        elif option in _PROPAGATION:
            propagation = _PROPAGATION[option]
        elif option:
            data.append(option)
    return Parsed(flags, propagation, ",".join(data))


_libc: ctypes.CDLL | None = None


def _lib() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        lib = ctypes.CDLL(None, use_errno=True)
        lib.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                              ctypes.c_char_p]  # fmt: skip
        lib.mount.restype = ctypes.c_int
        lib.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
        lib.umount2.restype = ctypes.c_int
        _libc = lib
    return _libc


def _enc(value: str | None) -> bytes | None:
    return None if value is None else os.fsencode(value)


def _sys_mount(
    source: str | None, target: str, fstype: str | None, flags: int, data: str | None
) -> None:
    """mount(2); OSError with errno on failure. ctypes drops the GIL during the call."""
    if _lib().mount(_enc(source), _enc(target), _enc(fstype), flags, _enc(data)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), target)


def mount(m: Mount, target: Path) -> None:
    if not m.type or "/" in m.type:
        raise InvalidArgument(f"invalid mount type {m.type!r}")
    parsed = parse_options(m.options)
    path = str(target)
    try:
        if m.type == "bind" or parsed.flags & MS_BIND:
            # A bind mount ignores every flag but MS_REC; the rest takes a remount.
            _sys_mount(m.source, path, None, MS_BIND | (parsed.flags & MS_REC), None)
            extra = parsed.flags & ~(MS_BIND | MS_REC)
            if extra:
                try:
                    kept = os.statvfs(path).f_flag
                    extra |= sum(ms for st, ms in _KEEP_ON_REMOUNT if kept & st)
                    _sys_mount(None, path, None, MS_REMOUNT | MS_BIND | extra, None)
                except OSError:
                    _sys_umount(path)
                    raise
        else:
            _sys_mount(m.source, path, m.type, parsed.flags, parsed.data or None)
        if parsed.propagation:
            try:
                _sys_mount(None, path, None, parsed.propagation, None)
            except OSError:
                _sys_umount(path)
                raise
    except OSError as e:
        why = os.strerror(e.errno) if e.errno else str(e)
        if e.errno == errno.EINVAL and len(parsed.data) >= 4096:
            why += " (options longer than a page)"
        raise FailedPrecondition(f"mount {m.type} {m.source} failed: {why}") from None


def _sys_umount(path: str) -> bool:
    return _lib().umount2(_enc(path), MNT_DETACH) == 0


def unmount(target: Path) -> None:
    # Lazy: a process still holding a file inside must not make cleanup fail.
    _sys_umount(str(target))


@contextlib.contextmanager
def temp_mount(mounts: Sequence[Mount], scratch: Path) -> Iterator[Path]:
    """Mount `mounts` in order on a fresh directory under `scratch`; unmount on exit."""
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch, prefix="mnt-") as tmp:
        target = Path(tmp)
        done = 0
        try:
            for m in mounts:
                mount(m, target)
                done += 1
            yield target
        finally:
            for _ in range(done):
                unmount(target)
