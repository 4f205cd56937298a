"""A client's write of a layer followed by a prestage: what it hands the prestage."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest

from linerd.content.live import LiveBlob
from linerd.content.local import LocalStore
from linerd.content.store import ContentStore
from linerd.errdefs import Aborted
from linerd.metadata.content import ContentRecords
from linerd.metadata.db import Database, sqlite_url

pytestmark = pytest.mark.unit

DATA = b"layer bytes " * 100
DIGEST = "sha256:" + hashlib.sha256(DATA).hexdigest()


def _store(tmp_path: Path) -> tuple[Database, ContentStore]:
    db = Database(sqlite_url(tmp_path))
    db.migrate()
    return db, ContentStore(LocalStore(tmp_path / "content"), ContentRecords(db))


def test_a_commit_hands_the_verified_digest_to_the_reader(tmp_path: Path) -> None:
    db, store = _store(tmp_path)

    async def main() -> None:
        writer = await store.writer("a", "layer-x", len(DATA), DIGEST, None)
        live = writer.live = LiveBlob(writer.ingest.directory / "data", 0)
        await writer.write(0, DATA[:100])
        await writer.write(100, DATA[100:])
        await writer.commit(len(DATA), DIGEST, {})
        writer.close()
        assert live.committed() == DIGEST

    try:
        asyncio.run(main())
    finally:
        db.close()


def test_a_write_that_starts_over_ends_the_reader(tmp_path: Path) -> None:
    """Bytes a prestage read may be rewritten: it must not stage what it read before."""
    db, store = _store(tmp_path)

    async def main() -> None:
        writer = await store.writer("a", "layer-x", len(DATA), DIGEST, None)
        live = writer.live = LiveBlob(writer.ingest.directory / "data", 0)
        await writer.write(0, b"x" * 100)
        reader = live.open()
        assert reader.read(10) == b"x" * 10
        await writer.write(0, DATA)  # the client restarts from the beginning
        assert writer.live is None
        with pytest.raises(Aborted):
            reader.read(10)
        reader.close()
        await writer.commit(len(DATA), DIGEST, {})
        writer.close()
        assert live.committed() == ""

    try:
        asyncio.run(main())
    finally:
        db.close()
