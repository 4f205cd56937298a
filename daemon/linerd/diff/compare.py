"""Write the difference between two directory trees as an OCI layer tar (for Diff/Diff).

A double walk: everything in `upper` that is new or changed against `lower` (type, mode,
owner, size, mtime, link target, device, xattrs) is written; whatever `lower` has and `upper`
lacks becomes a `.wh.<name>` whiteout (a removed directory is one whiteout, not one per
child). Regular files of equal size and whole-second mtimes are compared byte by byte (as
containerd does). Entries are sorted, so the same trees give the same bytes. Synchronous and
pure.
"""

from __future__ import annotations

import os
import stat
import tarfile
from decimal import Decimal
from pathlib import Path
from typing import BinaryIO

from linerd.diff.apply import WHITEOUT_PREFIX

_SKIPPED_XATTRS = ("trusted.overlay.",)


def _xattrs(path: Path) -> dict[str, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    found = {}
    for name in names:
        if name.startswith(_SKIPPED_XATTRS):
            continue
        try:
            found[name] = os.getxattr(path, name, follow_symlinks=False)
        except OSError:
            continue
    return found


def _changed(a: os.stat_result, b: os.stat_result, pa: Path, pb: Path) -> bool:
    if stat.S_IFMT(a.st_mode) != stat.S_IFMT(b.st_mode):
        return True
    if (a.st_mode, a.st_uid, a.st_gid) != (b.st_mode, b.st_uid, b.st_gid):
        return True
    if a.st_mtime_ns != b.st_mtime_ns:
        return True
    if stat.S_ISLNK(a.st_mode) and os.readlink(pa) != os.readlink(pb):
        return True
    if (stat.S_ISCHR(a.st_mode) or stat.S_ISBLK(a.st_mode)) and a.st_rdev != b.st_rdev:
        return True
    if stat.S_ISREG(a.st_mode):
        if a.st_size != b.st_size:
            return True
        # Whole-second mtimes (files from tars) may hide a change: compare the bytes, as
        # containerd's double walk does.
        if a.st_mtime_ns % 1_000_000_000 == 0 and not _same_bytes(pa, pb):
            return True
    return _xattrs(pa) != _xattrs(pb)


def _same_bytes(pa: Path, pb: Path) -> bool:
    with open(pa, "rb") as fa, open(pb, "rb") as fb:
        while True:
            ca, cb = fa.read(1 << 20), fb.read(1 << 20)
            if ca != cb:
                return False
            if not ca:
                return True


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


class _Writer:
    def __init__(self, out: BinaryIO) -> None:
        self.tar = tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT)  # noqa: SIM115

    def add(self, path: Path, name: str) -> None:
        info = self.tar.gettarinfo(str(path), arcname=name)  # tracks hard links by inode
        info.uname = info.gname = ""
        pax = {
            f"SCHILY.xattr.{k}": v.decode("utf-8", "surrogateescape")
            for k, v in _xattrs(path).items()
        }
        mtime_ns = os.lstat(path).st_mtime_ns
        if mtime_ns % 1_000_000_000:
            # tarfile would write the float st_mtime, which has lost the nanoseconds.
            pax["mtime"] = format(Decimal(mtime_ns).scaleb(-9), "f")
        if pax:
            info.pax_headers = pax
        if info.isreg():
            with open(path, "rb") as f:
                self.tar.addfile(info, f)
        else:
            self.tar.addfile(info)

    def whiteout(self, name: str) -> None:
        parent, _, base = name.rpartition("/")
        info = tarfile.TarInfo(
            f"{parent}/{WHITEOUT_PREFIX}{base}" if parent else f"{WHITEOUT_PREFIX}{base}"
        )
        info.mode = 0o644
        self.tar.addfile(info)

    def close(self) -> None:
        self.tar.close()


def write_diff(lower: Path | None, upper: Path, out: BinaryIO) -> None:
    """Write `upper` minus `lower` (None: an empty tree) as an uncompressed layer tar."""
    writer = _Writer(out)
    _walk(writer, lower, upper, "")
    writer.close()


def _walk(writer: _Writer, lower: Path | None, upper: Path, prefix: str) -> None:
    upper_names = set(os.listdir(upper))
    lower_names = set(os.listdir(lower)) if lower is not None else set()
    for name in sorted(upper_names | lower_names):
        rel = f"{prefix}{name}"
        u = upper / name
        if name not in upper_names:
            writer.whiteout(rel)
            continue
        ust = os.lstat(u)
        l_path = lower / name if lower is not None else None
        lst = _lstat(l_path) if l_path is not None else None
        if lst is None or _changed(lst, ust, l_path, u):  # type: ignore[arg-type]
            writer.add(u, rel)
        if stat.S_ISDIR(ust.st_mode):
            below = l_path if lst is not None and stat.S_ISDIR(lst.st_mode) else None
            _walk(writer, below, u, rel + "/")
