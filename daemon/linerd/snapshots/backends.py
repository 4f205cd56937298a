"""How each snapshotter lays out a snapshot directory and describes it as mounts.

A snapshot lives in `<snapshotter root>/<id>/`: `fs` holds its files (for overlay, the upper
layer only; for native, a full tree) and overlay adds `work`. Parents are given top first.
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path
from typing import Protocol

from linerd.core.types import Mount, SnapshotKind
from linerd.errdefs import Internal


class Backend(Protocol):
    name: str
    # Whether populate is quick enough to run inside the snapshot's database transaction.
    cheap_populate: bool

    def populate(self, directory: Path, kind: SnapshotKind, parents: list[Path]) -> None:
        """Fill a new snapshot directory (its parents' directories given, top first)."""

    def mounts(self, directory: Path, kind: SnapshotKind, parents: list[Path]) -> list[Mount]:
        """The mounts that show an active or view snapshot."""


def _bind(source: Path, readonly: bool) -> Mount:
    return Mount("bind", str(source), ("ro" if readonly else "rw", "rbind"))


class OverlayBackend:
    name = "overlayfs"
    cheap_populate = True  # two mkdirs

    def populate(self, directory: Path, kind: SnapshotKind, parents: list[Path]) -> None:
        (directory / "fs").mkdir(mode=0o755)
        if kind is SnapshotKind.ACTIVE:
            (directory / "work").mkdir(mode=0o711)

    def mounts(self, directory: Path, kind: SnapshotKind, parents: list[Path]) -> list[Mount]:
        readonly = kind is SnapshotKind.VIEW
        if not parents:
            return [_bind(directory / "fs", readonly)]
        lower = ":".join(str(p / "fs") for p in parents)
        if readonly:
            if len(parents) == 1:
                return [_bind(parents[0] / "fs", True)]
            return [Mount("overlay", "overlay", ("index=off", f"lowerdir={lower}"))]
        return [
            Mount(
                "overlay",
                "overlay",
                (
                    "index=off",
                    f"workdir={directory / 'work'}",
                    f"upperdir={directory / 'fs'}",
                    f"lowerdir={lower}",
                ),
            )
        ]


class NativeBackend:
    """Copies the parent's tree: slow to prepare, but needs nothing from the kernel."""

    name = "native"
    cheap_populate = False

    def populate(self, directory: Path, kind: SnapshotKind, parents: list[Path]) -> None:
        fs = directory / "fs"
        if not parents:
            fs.mkdir(mode=0o755)
            return
        # GNU cp keeps owners, modes, times, xattrs, hard links, devices and sparse files.
        result = subprocess.run(
            ["cp", "-a", "--reflink=auto", str(parents[0] / "fs"), str(fs)],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise Internal(f"copying parent snapshot: {result.stderr.strip()}")

    def mounts(self, directory: Path, kind: SnapshotKind, parents: list[Path]) -> list[Mount]:
        return [_bind(directory / "fs", kind is SnapshotKind.VIEW)]


def overlay_supported(scratch: Path) -> bool:
    """Whether this kernel mounts overlay here (a real mount, then unmount)."""
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch) as tmp:
        base = Path(tmp)
        for name in ("lower", "upper", "work", "merged"):
            (base / name).mkdir()
        options = f"lowerdir={base / 'lower'},upperdir={base / 'upper'},workdir={base / 'work'}"
        result = subprocess.run(
            ["mount", "-t", "overlay", "overlay", "-o", options, str(base / "merged")],
            capture_output=True,
        )
        if result.returncode != 0:
            return False
        subprocess.run(["umount", str(base / "merged")], check=False)
        return True
