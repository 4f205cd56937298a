"""mount(2)/umount2(2) through ctypes: bind, read-only bind, overlay, errors (needs root)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from linerd.core.types import Mount
from linerd.errdefs import FailedPrecondition, InvalidArgument
from linerd.mounts import mount, temp_mount, unmount

pytestmark = pytest.mark.integration


def _mounted(path: Path) -> list[list[str]]:
    rows = [line.split() for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    return [r for r in rows if r[4] == str(path)]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "file").write_text("hello")
    (tmp_path / "target").mkdir()
    return tmp_path


def test_bind_read_only_keeps_source_flags(tree: Path) -> None:
    target = tree / "target"
    mount(Mount("bind", str(tree / "src"), ("rbind", "ro")), target)
    try:
        assert (target / "file").read_text() == "hello"
        with pytest.raises(OSError):
            (target / "new").write_text("x")
        assert os.statvfs(target).f_flag & os.ST_RDONLY
        # The remount repeats the flags the source mount has (e.g. nosuid on /tmp or /dev/shm).
        source_flags = os.statvfs(tree / "src").f_flag
        for flag in (os.ST_NOSUID, os.ST_NODEV, os.ST_NOEXEC):
            assert os.statvfs(target).f_flag & flag == source_flags & flag
    finally:
        unmount(target)
    assert not _mounted(target)


def test_bind_read_write(tree: Path) -> None:
    target = tree / "target"
    mount(Mount("none", str(tree / "src"), ("bind", "rw")), target)
    try:
        (target / "new").write_text("x")
        assert (tree / "src" / "new").read_text() == "x"
    finally:
        unmount(target)


def test_overlay_with_data_options(tree: Path) -> None:
    for d in ("upper", "work"):
        (tree / d).mkdir()
    opts = ("index=off", f"workdir={tree / 'work'}", f"upperdir={tree / 'upper'}",
            f"lowerdir={tree / 'src'}")  # fmt: skip
    with temp_mount([Mount("overlay", "overlay", opts)], tree / "scratch") as target:
        assert _mounted(target)[0][-3] == "overlay"
        (target / "file").write_text("changed")
        assert (tree / "upper" / "file").read_text() == "changed"
        assert (tree / "src" / "file").read_text() == "hello"
    assert not _mounted(target)


def test_errors_name_the_mount(tree: Path) -> None:
    with pytest.raises(FailedPrecondition, match=r"mount bind .*nosuch.* failed"):
        mount(Mount("bind", str(tree / "nosuch"), ("rbind",)), tree / "target")
    with pytest.raises(FailedPrecondition, match="mount overlay"):
        mount(Mount("overlay", "overlay", ("lowerdir=/nonexistent-liner",)), tree / "target")
    with pytest.raises(InvalidArgument):
        mount(Mount("../x", "x", ()), tree / "target")
    assert not _mounted(tree / "target")
    unmount(tree / "target")  # not mounted: ignored
