"""Users and groups from an image's /etc/passwd and /etc/group, read inside its rootfs only.

The rootfs is image content: its /etc/passwd may be a symlink to `/etc/shadow` or
`../../../../etc/passwd`, and /etc itself may be a link. Paths are resolved component by
component from a directory fd of the rootfs, each symlink interpreted as if the rootfs were
`/` (`..` stops at it), as containerd's scoped join and openat2's RESOLVE_IN_ROOT do; no
host file outside the rootfs is ever opened. Name and id semantics follow containerd's
`oci.WithUser` / `WithAdditionalGIDs` (runc's user database format).

Reads files: call off the event loop.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from linerd.errdefs import InvalidArgument

MAX_DB_BYTES = 4 << 20  # real databases are a few KiB; a huge one is hostile
MAX_SYMLINKS = 40  # as the kernel's path walk
MAX_ID = (1 << 32) - 2  # uid_t/gid_t; (uid_t)-1 means "no change" to the kernel

_NUMBER = re.compile(r"[0-9]+")


@dataclass(frozen=True)
class PasswdEntry:
    name: str
    uid: int
    gid: int


@dataclass(frozen=True)
class GroupEntry:
    name: str
    gid: int
    members: tuple[str, ...]


def parse_id(text: str) -> int | None:
    """A decimal uid/gid, or None when ``text`` is not one (then it is a name)."""
    if not _NUMBER.fullmatch(text):
        return None
    value = int(text)
    if value > MAX_ID:
        raise InvalidArgument(f"id {text} is out of range (at most {MAX_ID})")
    return value


def check_id(value: int, what: str) -> int:
    if not 0 <= value <= MAX_ID:
        raise InvalidArgument(f"{what} {value} is out of range (0 to {MAX_ID})")
    return value


# -- reading inside the rootfs ------------------------------------------------------------


def read_in_root(root: Path, path: str, limit: int = MAX_DB_BYTES) -> bytes | None:
    """The bytes of ``path`` resolved inside ``root``; None when it does not exist there."""
    where = f"the image's {path}"
    try:
        root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise InvalidArgument(f"rootfs {str(root)!r}: {e.strerror}") from None
    try:
        fd = _open_in_root(root_fd, path, where)
    finally:
        os.close(root_fd)
    if fd is None:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InvalidArgument(f"{where} is not a regular file")
        data = os.read(fd, limit + 1)
        chunks = [data]
        size = len(data)
        while data and size <= limit:
            data = os.read(fd, limit + 1 - size)
            chunks.append(data)
            size += len(data)
        if size > limit:
            raise InvalidArgument(f"{where} is over {limit} bytes")
        return b"".join(chunks)
    except OSError as e:
        raise InvalidArgument(f"{where}: {e.strerror}") from None
    finally:
        os.close(fd)


def _components(path: str) -> list[str]:
    return [p for p in path.split("/") if p not in ("", ".")]


def _open_in_root(root_fd: int, path: str, where: str) -> int | None:
    """An fd of the final component (not followed if a link is swapped in), or None."""
    parts = deque(_components(path))
    if not parts:
        return None
    dirs = [root_fd]  # dirs[0] is the root and is closed by the caller
    links = 0
    try:
        while parts:
            name = parts.popleft()
            if name == "..":
                if len(dirs) > 1:
                    os.close(dirs.pop())
                continue
            try:
                st = os.stat(name, dir_fd=dirs[-1], follow_symlinks=False)
            except (FileNotFoundError, NotADirectoryError):
                return None
            if stat.S_ISLNK(st.st_mode):
                links += 1
                if links > MAX_SYMLINKS:
                    raise InvalidArgument(f"{where}: too many levels of symbolic links")
                target = os.readlink(name, dir_fd=dirs[-1])
                if target.startswith("/"):
                    while len(dirs) > 1:
                        os.close(dirs.pop())
                parts.extendleft(reversed(_components(target)))
                continue
            if parts:
                if not stat.S_ISDIR(st.st_mode):
                    return None
                dirs.append(
                    os.open(
                        name,
                        os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                        dir_fd=dirs[-1],
                    )
                )
                continue
            # O_NONBLOCK: a FIFO must not hang the caller (it is refused as not regular).
            return os.open(
                name,
                os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                dir_fd=dirs[-1],
            )
        return None  # ended on a directory (`..` or a link to one)
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENOTDIR):
            return None
        if e.errno == errno.ELOOP:  # the component became a link between stat and open
            raise InvalidArgument(f"{where}: changed while being read") from None
        raise InvalidArgument(f"{where}: {e.strerror}") from None
    finally:
        for fd in dirs[1:]:
            os.close(fd)


# -- the databases ------------------------------------------------------------------------


def _lines(data: bytes) -> list[list[str]]:
    rows = []
    for raw in data.decode("utf-8", errors="replace").splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            rows.append(line.split(":"))
    return rows


def parse_passwd(data: bytes) -> list[PasswdEntry]:
    """``name:password:uid:gid:gecos:home:shell``; malformed lines are skipped (never read
    as uid 0)."""
    entries = []
    for fields in _lines(data):
        if len(fields) < 4 or not fields[0]:
            continue
        uid, gid = fields[2], fields[3]
        if not (_NUMBER.fullmatch(uid) and _NUMBER.fullmatch(gid)):
            continue
        if int(uid) > MAX_ID or int(gid) > MAX_ID:
            continue
        entries.append(PasswdEntry(fields[0], int(uid), int(gid)))
    return entries


def parse_group(data: bytes) -> list[GroupEntry]:
    """``name:password:gid:member,member``."""
    entries = []
    for fields in _lines(data):
        if len(fields) < 3 or not fields[0]:
            continue
        gid = fields[2]
        if not _NUMBER.fullmatch(gid) or int(gid) > MAX_ID:
            continue
        members = fields[3] if len(fields) > 3 else ""
        entries.append(
            GroupEntry(fields[0], int(gid), tuple(m.strip() for m in members.split(",") if m))
        )
    return entries


class ImageUsers:
    """The user and group databases of one rootfs, each read at most once."""

    def __init__(self, rootfs: Path) -> None:
        self.rootfs = rootfs
        self._passwd: list[PasswdEntry] | None = None
        self._group: list[GroupEntry] | None = None
        self._read: set[str] = set()

    def passwd(self) -> list[PasswdEntry] | None:
        """None when the image has no /etc/passwd."""
        if "passwd" not in self._read:
            data = read_in_root(self.rootfs, "/etc/passwd")
            self._passwd = None if data is None else parse_passwd(data)
            self._read.add("passwd")
        return self._passwd

    def group(self) -> list[GroupEntry] | None:
        if "group" not in self._read:
            data = read_in_root(self.rootfs, "/etc/group")
            self._group = None if data is None else parse_group(data)
            self._read.add("group")
        return self._group

    def user_by_name(self, name: str) -> PasswdEntry:
        entries = self.passwd()
        if entries is None:
            raise InvalidArgument(f"user {name!r}: the image has no /etc/passwd")
        for entry in entries:
            if entry.name == name:
                return entry
        raise InvalidArgument(f"user {name!r} not found in the image's /etc/passwd")

    def user_by_id(self, uid: int) -> PasswdEntry | None:
        for entry in self.passwd() or []:
            if entry.uid == uid:
                return entry
        return None

    def group_by_name(self, name: str) -> GroupEntry:
        entries = self.group()
        if entries is None:
            raise InvalidArgument(f"group {name!r}: the image has no /etc/group")
        for entry in entries:
            if entry.name == name:
                return entry
        raise InvalidArgument(f"group {name!r} not found in the image's /etc/group")

    def resolve(self, user: str) -> tuple[int, int]:
        """uid and gid of ``uid``, ``name``, ``uid:gid``, ``name:group`` (containerd's
        WithUser): a bare uid takes its gid from /etc/passwd (0 when it has no entry); a
        given group replaces the user's own."""
        parts = user.split(":")
        if len(parts) > 2 or not all(parts):
            raise InvalidArgument(f"invalid user {user!r}: want user, uid, user:group or uid:gid")
        uid = parse_id(parts[0])
        if len(parts) == 1:
            if uid is None:
                entry = self.user_by_name(parts[0])
                return entry.uid, entry.gid
            found = self.user_by_id(uid)
            return uid, found.gid if found else 0
        if uid is None:
            uid = self.user_by_name(parts[0]).uid
        gid = parse_id(parts[1])
        if gid is None:
            gid = self.group_by_name(parts[1]).gid
        return uid, gid

    def member_gids(self, user: str) -> list[int]:
        """The gids of the groups that list ``user`` (a name or a uid) as a member, in
        /etc/group's order, without the group named after the user (its primary group)."""
        uid = parse_id(user)
        if uid is not None:
            entry = self.user_by_id(uid)
            if entry is None:
                return []
            user = entry.name
        return [g.gid for g in self.group() or [] if g.name != user and user in g.members]
