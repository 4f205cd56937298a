"""Snapshot removal: the record and the directory's name go at once, the contents after."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from linerd.core.types import SnapshotKind
from linerd.errdefs import FailedPrecondition, NotFound
from linerd.metadata.db import Database, sqlite_url
from linerd.snapshots.backends import OverlayBackend
from linerd.snapshots.store import SnapshotStore

pytestmark = pytest.mark.unit


def test_remove_moves_the_directory_aside_and_empties_it_in_the_background(
    tmp_path: Path,
) -> None:
    db = Database(sqlite_url(tmp_path))
    db.migrate()
    root = tmp_path / "snapshots"
    store = SnapshotStore(db, OverlayBackend(), root)

    async def body() -> None:
        await store.create("ns", "base", "", {}, SnapshotKind.ACTIVE, None)
        await store.commit("ns", "base-c", "base", {}, None)
        for round in range(3):  # each round moves a directory aside: names must not collide
            await store.create("ns", "k", "base-c", {}, SnapshotKind.ACTIVE, None)
            (snapshot_dir,) = [p for p in root.iterdir() if p.name != "1"]
            (snapshot_dir / "fs" / "file").write_text(str(round))
            with pytest.raises(FailedPrecondition):  # has children: nothing moves
                await store.remove("ns", "base-c")
            await store.remove("ns", "k")
            assert not snapshot_dir.exists()
            with pytest.raises(NotFound):
                await store.stat("ns", "k")
            await store.settle()
            assert sorted(p.name for p in root.iterdir()) == ["1"]
        await store.remove("ns", "base-c")
        await store.settle()
        assert list(root.iterdir()) == []

    try:
        asyncio.run(body())
    finally:
        db.close()
