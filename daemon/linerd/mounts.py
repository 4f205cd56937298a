"""Mounting API mounts (bind and overlay) with mount(2), via util-linux's mount(8)."""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from linerd.core.types import Mount
from linerd.errdefs import FailedPrecondition, InvalidArgument

_FLAG_OPTIONS = {"rbind", "bind"}


def mount(m: Mount, target: Path) -> None:
    options = [o for o in m.options if o not in _FLAG_OPTIONS]
    if m.type == "bind":
        args = ["mount", "--rbind" if "rbind" in m.options else "--bind", m.source, str(target)]
        _run(args, m)
        if "ro" in options:
            _run(["mount", "-o", "remount,bind,ro", str(target)], m)
        return
    if not m.type or "/" in m.type:
        raise InvalidArgument(f"invalid mount type {m.type!r}")
    args = ["mount", "-t", m.type, m.source, str(target)]
    if options:
        args += ["-o", ",".join(options)]
    _run(args, m)


def unmount(target: Path) -> None:
    # Lazy: a process still holding a file inside must not make cleanup fail.
    subprocess.run(["umount", "-l", str(target)], capture_output=True, check=False)


def _run(args: list[str], m: Mount) -> None:
    result = subprocess.run(args, capture_output=True, text=True)
    if result.returncode != 0:
        raise FailedPrecondition(
            f"mount {m.type} {m.source} failed: {result.stderr.strip() or result.returncode}"
        )


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
