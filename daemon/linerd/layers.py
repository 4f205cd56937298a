"""Layers and mounts: apply a layer blob onto a snapshot's mounts (decompress, hash, extract,
verify), and write the difference between two mounts as a layer.

The common mounts are written without mounting anything: a bind mount of one of our own
snapshot directories is extracted into directly, and a single overlay mount into its upper
directory (whiteouts converted to overlay's form, lowers consulted for hard links). Any other
mount is mounted on a scratch directory and extracted through.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import zstandard

from linerd import faults
from linerd.core.types import Descriptor, Mount
from linerd.diff.apply import apply_staged, apply_tar
from linerd.diff.compression import SUPPORTED_MEDIA_TYPES, HashingReader, ReadAhead, open_layer
from linerd.diff.worker import (
    UNCOMPRESSED_LAYER,
    StagedLayer,
    apply_in_process,
    stage_blob,
    stage_in_process,
)
from linerd.errdefs import InvalidArgument
from linerd.mounts import temp_mount


@dataclass(frozen=True, slots=True)
class Target:
    path: Path
    overlay: bool
    parents: tuple[Path, ...] = ()


def direct_target(mounts: Sequence[Mount], trusted: Path) -> Target | None:
    """A directory to extract into without mounting, if the mounts allow it."""
    if len(mounts) != 1:
        return None
    m = mounts[0]
    if m.type == "bind" and "ro" not in m.options and _inside(Path(m.source), trusted):
        return Target(Path(m.source), overlay=False)
    if m.type == "overlay":
        options = dict(o.split("=", 1) for o in m.options if "=" in o)
        upper, lower = options.get("upperdir"), options.get("lowerdir")
        if upper and lower is not None:
            parents = tuple(Path(p) for p in lower.split(":") if p)
            if all(_inside(p, trusted) for p in (Path(upper), *parents)):
                return Target(Path(upper), overlay=True, parents=parents)
    return None


def _inside(path: Path, root: Path) -> bool:
    return path.is_absolute() and path.resolve().is_relative_to(root.resolve())


def apply_stream(raw: BinaryIO, media_type: str, target: Target, name: str) -> Descriptor:
    """Extract a (compressed) layer stream onto `target`; returns the uncompressed descriptor
    whose digest is the layer's diff ID. Blocking: run it in a thread."""
    hashed = HashingReader(open_layer(raw, media_type, name=name))
    with ReadAhead(hashed) as ahead:  # type: ignore[arg-type]
        apply_tar(ahead, target.path, overlay=target.overlay, parents=target.parents)  # type: ignore[arg-type]
        faults.point("layer-apply")
        while ahead.read(1 << 20):  # padding after the tar end counts toward the diff ID
            pass
    return Descriptor(UNCOMPRESSED_LAYER, hashed.digest, hashed.size)


# Layers from this size on are staged in a worker process (linerd.diff.worker). Below it
# the GIL contention a worker avoids is small: with workers forked from the zygote, 1 MiB
# made ctr pulls of the bench images neither faster nor slower.
WORKER_MIN_SIZE = 4 << 20


def stage_stream(
    raw: BinaryIO,
    media_type: str,
    staging: Path,
    name: str,
    *,
    size: int,
    yielding: bool = False,
) -> StagedLayer:
    """Phase one of a staged apply (`stage_tar`) of a (compressed) layer stream of `size`
    bytes: in a worker process if it is large (`yielding`: see `stage_in_process`).
    Blocking: run it in a thread."""
    if size >= WORKER_MIN_SIZE:
        return stage_in_process(raw, staging, media_type, name, yielding=yielding)
    return stage_blob(raw, staging, media_type, name)


def staged_target(mounts: Sequence[Mount], trusted: Path, staging: Path) -> Target | None:
    """Where a layer staged in `staging` can be moved to: a snapshot directory of ours on
    the same filesystem (files are renamed into place). None otherwise."""
    target = direct_target(mounts, trusted)
    if target is None or os.stat(staging).st_dev != os.stat(target.path).st_dev:
        return None
    return target


def apply_staged_to(staged: StagedLayer, staging: Path, target: Target) -> None:
    """Phase two: move a staged layer onto `target` (from `staged_target`); by the worker
    that staged it, if one did. Blocking."""
    if staged.worker is not None:
        staged.worker.move(target.path, overlay=target.overlay, parents=target.parents)
    else:
        apply_staged(
            staged.entries, staging, target.path, overlay=target.overlay, parents=target.parents
        )
    faults.point("layer-apply")


def apply_to_mounts(
    raw: BinaryIO,
    media_type: str,
    mounts: Sequence[Mount],
    trusted: Path,
    scratch: Path,
    name: str,
    *,
    size: int = 0,
) -> Descriptor:
    """Extract a (compressed) layer of `size` bytes onto `mounts`; returns the uncompressed
    descriptor. A large layer onto one of our own snapshot directories is extracted in a
    worker process (`apply_in_process`), off the daemon's GIL. Blocking."""
    if not mounts:
        raise InvalidArgument("no mounts to apply the layer to")
    if media_type not in SUPPORTED_MEDIA_TYPES:
        raise InvalidArgument(f"{name}: unsupported media type {media_type!r}")
    target = direct_target(mounts, trusted)
    if target is not None and size >= WORKER_MIN_SIZE:
        # Straight onto the snapshot's directory in a worker: nothing staged to move after.
        applied = apply_in_process(
            raw, target.path, media_type, name, overlay=target.overlay, parents=target.parents
        )
        faults.point("layer-apply")
        return applied
    if target is not None:
        return apply_stream(raw, media_type, target, name)
    with temp_mount(mounts, scratch) as path:
        return apply_stream(raw, media_type, Target(path, overlay=False), name)


class _HashingWriter:
    """A write-only file wrapper counting and hashing what passes through."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self._hash.update(data)
        self.size += len(data)
        return self._out.write(data)

    def flush(self) -> None:
        self._out.flush()

    @property
    def digest(self) -> str:
        return "sha256:" + self._hash.hexdigest()


COMPRESSIONS = {
    "application/vnd.oci.image.layer.v1.tar": "none",
    "application/vnd.oci.image.layer.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd": "zstd",
    "application/vnd.docker.image.rootfs.diff.tar.gzip": "gzip",
}


def write_layer(
    left: Sequence[Mount], right: Sequence[Mount], media_type: str, scratch: Path, out: BinaryIO
) -> tuple[Descriptor, str]:
    """Write the changes from `left` (may be empty) to `right` as a layer into `out`;
    returns its descriptor and diff ID. Both sides are mounted read-only. Blocking."""
    from linerd.diff.compare import write_diff  # tarfile: ~0.4 MB a pull never needs

    compression = COMPRESSIONS.get(media_type)
    if compression is None:
        raise InvalidArgument(f"cannot write layers of media type {media_type!r}")
    if not right:
        raise InvalidArgument("no mounts for the upper side of the diff")
    with contextlib.ExitStack() as stack:
        lower = stack.enter_context(temp_mount(_readonly(left), scratch)) if left else None
        upper = stack.enter_context(temp_mount(_readonly(right), scratch))
        compressed = _HashingWriter(out)
        sink: Any = compressed
        if compression == "gzip":
            sink = stack.enter_context(gzip.GzipFile(fileobj=compressed, mode="wb", mtime=0))
        elif compression == "zstd":
            sink = stack.enter_context(
                zstandard.ZstdCompressor().stream_writer(compressed, closefd=False)
            )
        uncompressed = _HashingWriter(sink)
        write_diff(lower, upper, uncompressed)  # type: ignore[arg-type]
        stack.close()  # flush the compressor before reading the digest
    return Descriptor(media_type, compressed.digest, compressed.size), uncompressed.digest


def _readonly(mounts: Sequence[Mount]) -> list[Mount]:
    return [
        Mount(m.type, m.source, (*[o for o in m.options if o != "rw"], "ro"))
        if "ro" not in m.options
        else m
        for m in mounts
    ]
