"""Snapshot and staging directories are flagged as Orlov top directories where the
filesystem knows the flag (ext4 here), and nothing fails where it does not (tmpfs)."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from linerd.metadata.db import Database, sqlite_url
from linerd.prestage import Prestager
from linerd.snapshots.backends import NativeBackend, OverlayBackend
from linerd.snapshots.store import SnapshotStore
from linerd.topdir import FS_TOPDIR_FL, get_flags, mark_top_directory

pytestmark = pytest.mark.unit


@pytest.fixture
def on_disk() -> Iterator[Path]:
    """A directory on a filesystem with inode flags (pytest's tmp_path may be a tmpfs)."""
    with tempfile.TemporaryDirectory(dir="/var/tmp") as d:
        if get_flags(Path(d)) is None:
            pytest.skip("/var/tmp has no inode flags")
        yield Path(d)


def is_top(path: Path) -> bool:
    return bool((get_flags(path) or 0) & FS_TOPDIR_FL)


def test_mark_sets_the_flag_and_keeps_the_others(on_disk: Path) -> None:
    before = get_flags(on_disk)
    assert before is not None and not before & FS_TOPDIR_FL
    assert mark_top_directory(on_disk)
    assert get_flags(on_disk) == before | FS_TOPDIR_FL
    assert mark_top_directory(on_disk)  # again: nothing to change


def test_where_the_flag_is_unknown_nothing_fails() -> None:
    with tempfile.TemporaryDirectory(dir="/dev/shm") as d:  # tmpfs: a few flags, not this
        assert not mark_top_directory(Path(d))
        assert not is_top(Path(d))


@pytest.mark.parametrize("backend", [OverlayBackend, NativeBackend])
def test_snapshot_roots_are_top_directories(on_disk: Path, backend: type) -> None:
    db = Database(sqlite_url(on_disk))
    db.migrate()
    store = SnapshotStore(db, backend(), on_disk / "snapshots" / backend.name)
    assert is_top(store.root)


def test_the_staging_area_is_a_top_directory(on_disk: Path) -> None:
    area = Prestager(on_disk / "prestage")
    assert is_top(area.directory)
    assert not is_top(area.new_dir())  # the flag is not inherited: only its children spread
