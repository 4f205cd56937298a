"""A committed snapshot's usage: measured after Commit returns, or on demand."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select, update

from linerd.core.types import SnapshotKind, Usage
from linerd.metadata.db import Database, sqlite_url
from linerd.metadata.models import snapshots
from linerd.snapshots import store as store_module
from linerd.snapshots.backends import OverlayBackend
from linerd.snapshots.store import UNMEASURED, SnapshotStore

pytestmark = pytest.mark.unit


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    db = Database(sqlite_url(tmp_path))
    db.migrate()
    yield db
    db.close()


def recorded(db: Database, key: str) -> tuple[int, int]:
    def get(conn):  # type: ignore[no-untyped-def]
        row = conn.execute(select(snapshots).where(snapshots.c.key == key)).one()
        return row.size, row.inodes

    return db.run_sync(get)


async def prepare_with_file(store: SnapshotStore, root: Path, key: str) -> None:
    """The store's only snapshot, with one 10,000-byte file."""
    await store.create("ns", key, "", {}, SnapshotKind.ACTIVE, None)
    (directory,) = [p for p in root.iterdir() if p.name.isdigit()]
    (directory / "fs" / "data").write_bytes(b"x" * 10000)


def test_commit_returns_before_the_walk_which_then_records_the_usage(
    tmp_path: Path, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    walking = threading.Event()
    release = threading.Event()
    real = store_module.disk_usage

    def slow_walk(root: Path) -> Usage:
        walking.set()
        release.wait(10)
        return real(root)

    monkeypatch.setattr(store_module, "disk_usage", slow_walk)
    root = tmp_path / "snapshots"
    store = SnapshotStore(db, OverlayBackend(), root)

    async def body() -> None:
        await prepare_with_file(store, root, "k")
        await asyncio.wait_for(store.commit("ns", "c", "k", {}, None), 5)
        assert recorded(db, "c") == (UNMEASURED, UNMEASURED)
        assert store.totals_sync() == (0, 1)  # not counted until measured
        await asyncio.to_thread(walking.wait, 5)
        release.set()
        await store.settle()
        size, inodes = recorded(db, "c")
        assert size >= 10000 and inodes == 1
        assert await store.usage("ns", "c") == Usage(size, inodes)
        assert store.totals_sync() == (size, 1)

    asyncio.run(body())


def test_commits_inside_measuring_after_are_measured_when_the_last_block_ends(
    tmp_path: Path, db: Database
) -> None:
    root = tmp_path / "snapshots"
    store = SnapshotStore(db, OverlayBackend(), root)

    async def body() -> None:
        await prepare_with_file(store, root, "k")
        with store.measuring_after():
            with store.measuring_after():  # an unpack beside another
                await store.commit("ns", "c", "k", {}, None)
            await store.settle()
            assert recorded(db, "c") == (UNMEASURED, UNMEASURED)  # held by the outer block
        await store.settle()
        size, inodes = recorded(db, "c")
        assert size >= 10000 and inodes == 1
        assert await store.usage("ns", "c") == Usage(size, inodes)

    asyncio.run(body())


def test_a_held_snapshot_is_measured_on_demand(tmp_path: Path, db: Database) -> None:
    root = tmp_path / "snapshots"
    store = SnapshotStore(db, OverlayBackend(), root)

    async def body() -> None:
        await prepare_with_file(store, root, "k")
        with store.measuring_after():
            await store.commit("ns", "c", "k", {}, None)
            usage = await store.usage("ns", "c")
            assert usage.size >= 10000 and usage.inodes == 1
        await store.settle()  # the block's own measurement finds it measured: no change
        assert recorded(db, "c") == (usage.size, usage.inodes)

    asyncio.run(body())


def test_usage_measures_a_snapshot_left_unmeasured(tmp_path: Path, db: Database) -> None:
    root = tmp_path / "snapshots"
    store = SnapshotStore(db, OverlayBackend(), root)

    async def body() -> None:
        await prepare_with_file(store, root, "k")
        await store.commit("ns", "c", "k", {}, None)
        await store.settle()
        # As after a crash between Commit and its measurement.
        db.run_sync(
            lambda c: c.execute(update(snapshots).values(size=UNMEASURED, inodes=UNMEASURED))
        )
        usage = await store.usage("ns", "c")
        assert usage.size >= 10000 and usage.inodes == 1
        assert recorded(db, "c") == (usage.size, usage.inodes)

    asyncio.run(body())


def test_start_up_measures_what_a_crash_left_unmeasured(tmp_path: Path, db: Database) -> None:
    root = tmp_path / "snapshots"

    async def commit() -> None:
        store = SnapshotStore(db, OverlayBackend(), root)
        await prepare_with_file(store, root, "k")
        await store.commit("ns", "c", "k", {}, None)
        await store.settle()

    asyncio.run(commit())
    db.run_sync(lambda c: c.execute(update(snapshots).values(size=UNMEASURED, inodes=UNMEASURED)))

    async def restart() -> None:
        store = SnapshotStore(db, OverlayBackend(), root)
        await store.measure_unmeasured()
        await store.settle()

    asyncio.run(restart())
    size, inodes = recorded(db, "c")
    assert size >= 10000 and inodes == 1
