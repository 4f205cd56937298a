"""Applying a layer blob onto a snapshot's mounts: decompress, hash, extract, verify.

The common mounts are written without mounting anything: a bind mount of one of our own
snapshot directories is extracted into directly, and a single overlay mount into its upper
directory (whiteouts converted to overlay's form, lowers consulted for hard links). Any other
mount is mounted on a scratch directory and extracted through.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from linerd.core.types import Descriptor, Mount
from linerd.diff.apply import apply_tar
from linerd.diff.compression import HashingReader, open_layer
from linerd.errdefs import InvalidArgument
from linerd.mounts import temp_mount

UNCOMPRESSED_LAYER = "application/vnd.oci.image.layer.v1.tar"


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
    apply_tar(hashed, target.path, overlay=target.overlay, parents=target.parents)
    hashed.drain()  # padding after the tar end counts toward the diff ID
    return Descriptor(UNCOMPRESSED_LAYER, hashed.digest, hashed.size)


def apply_to_mounts(
    raw: BinaryIO, media_type: str, mounts: Sequence[Mount], trusted: Path, scratch: Path, name: str
) -> Descriptor:
    if not mounts:
        raise InvalidArgument("no mounts to apply the layer to")
    target = direct_target(mounts, trusted)
    if target is not None:
        return apply_stream(raw, media_type, target, name)
    with temp_mount(mounts, scratch) as path:
        return apply_stream(raw, media_type, Target(path, overlay=False), name)
