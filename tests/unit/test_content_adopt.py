"""A write of a blob that is on disk, racing the collector's sweep of that blob."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest

from linerd.content.local import LocalStore
from linerd.content.store import ContentStore
from linerd.errdefs import AlreadyExists
from linerd.metadata.content import ContentRecords
from linerd.metadata.db import Database, sqlite_url

pytestmark = pytest.mark.unit

DATA = b"shared layer"
DIGEST = "sha256:" + hashlib.sha256(DATA).hexdigest()


async def _written(store: ContentStore, namespace: str) -> None:
    writer = await store.writer(namespace, "first", len(DATA), DIGEST, None)
    await writer.write(0, DATA)
    await writer.commit(len(DATA), DIGEST, {})


def test_a_blob_swept_while_the_write_waits_is_written_again(tmp_path: Path) -> None:
    db = Database(sqlite_url(tmp_path))
    db.migrate()
    store = ContentStore(LocalStore(tmp_path / "content"), ContentRecords(db))

    async def main() -> None:
        await _written(store, "a")
        async with store.gc_lock:  # the collector's sweep holds it
            opening = asyncio.create_task(store.writer("b", "second", len(DATA), DIGEST, None))
            await asyncio.sleep(0)  # the open saw the file and now waits for the lock
            store.local.path(DIGEST).unlink()  # the sweep removes the blob
        writer = await opening  # not AlreadyExists: nothing is recorded for "b"
        await writer.write(0, DATA)
        info = await writer.commit(len(DATA), DIGEST, {})
        assert info.digest == DIGEST
        with pytest.raises(AlreadyExists):  # and once it is back, it is adopted again
            await store.writer("c", "third", len(DATA), DIGEST, None)

    try:
        asyncio.run(main())
    finally:
        db.close()


def test_adopting_a_recorded_blob_changes_its_labels_in_the_same_transaction(
    tmp_path: Path,
) -> None:
    db = Database(sqlite_url(tmp_path))
    db.migrate()
    store = ContentStore(LocalStore(tmp_path / "content"), ContentRecords(db))

    def add_source(current: dict[str, str]) -> dict[str, str]:
        return {**current, "source": current.get("source", "") + "+b"}

    async def main() -> None:
        await _written(store, "a")
        await store.records.update("a", DIGEST, {"source": "a"}, ["labels.source"])
        # recorded already: the labels change, the first ones kept
        assert await store.adopt("a", DIGEST, {"ignored": "x"}, None, add_source)
        assert (await store.records.get("a", DIGEST)).labels == {"source": "a+b"}
        # not recorded in this namespace: recorded with the labels given
        assert await store.adopt("b", DIGEST, {"source": "b"}, None, add_source)
        assert (await store.records.get("b", DIGEST)).labels == {"source": "b"}
        # the same labels again: nothing written (its update time stays)
        before = await store.records.get("a", DIGEST)
        assert await store.adopt("a", DIGEST, {}, None, lambda current: current)
        assert (await store.records.get("a", DIGEST)).updated_at == before.updated_at

    try:
        asyncio.run(main())
    finally:
        db.close()
