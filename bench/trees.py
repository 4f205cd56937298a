"""What the A/B drivers share (cri_ab, cri_write_ab, cri_pull_ab, mem_ab, pull_cpu,
cri_profile): daemons that run another source tree's code, and a scratch registry serving
the CRI's images."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: F401  (puts the tests' harnesses on sys.path)
from cri_support import liner_cri, push_busybox_image, push_pause_image
from registry import Registry


def pythonpath(tree: Path) -> str:
    return ":".join(str(tree / d) for d in ("daemon", "api", "common", "client"))


@contextlib.contextmanager
def tree_code(tree: Path | None) -> Iterator[None]:
    """PYTHONPATH naming `tree`'s code (this checkout's if None) while a daemon is started:
    the processes started meanwhile run it."""
    saved = os.environ.get("PYTHONPATH")
    if tree is not None:
        os.environ["PYTHONPATH"] = pythonpath(tree.resolve())
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved


def tree_daemon(
    stack: contextlib.ExitStack, base: Path, tree: Path | None, pause: str, registry: str
) -> Any:
    """A CRI linerd in `base` (made here) running `tree`'s code, this checkout's if None;
    stopped when `stack` closes."""
    with tree_code(tree):
        base.mkdir()
        return stack.enter_context(liner_cri(base, pause, registry, log_level="info"))


@dataclass
class Served:
    work: Path  # the scratch directory, in /dev/shm
    registry: Registry
    pause: str
    busybox: str
    pulls: list[str] = field(default_factory=list)  # small images, each its own config


@contextlib.contextmanager
def served_images(prefix: str, pulls: int = 0) -> Iterator[Served]:
    """A scratch directory with a loopback registry serving the pause image, busybox and
    `pulls` more small images (busybox's layer); all removed afterwards."""
    work = Path(tempfile.mkdtemp(prefix=prefix, dir="/dev/shm"))
    (work / "registry").mkdir()
    reg = Registry("open", workdir=work / "registry")
    reg.start()
    try:
        images = work / "images"
        images.mkdir()
        yield Served(
            work,
            reg,
            push_pause_image(reg, images),
            push_busybox_image(reg, images, "bench/cri-busybox").ref(),
            [push_busybox_image(reg, images, f"bench/cri-pull-{i}").ref() for i in range(pulls)],
        )
    finally:
        reg.stop()
        shutil.rmtree(work, ignore_errors=True)
