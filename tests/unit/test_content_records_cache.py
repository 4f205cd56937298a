"""Content records a write puts in the cache read back as the database has them."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from linerd.metadata.content import ContentRecords, _get, _info
from linerd.metadata.db import Database, sqlite_url

pytestmark = pytest.mark.unit

DIGEST = "sha256:" + "a" * 64


def test_written_records_are_cached_as_stored(tmp_path: Path) -> None:
    db = Database(sqlite_url(tmp_path))
    db.migrate()
    records = ContentRecords(db)

    async def stored() -> object:
        return await db.run(lambda conn: _info(_get(conn, "ns", DIGEST)))

    async def main() -> None:
        await records.add("ns", DIGEST, 10, {"a": "1"}, None)
        assert records.cache.get(("ns", DIGEST)) == await stored()
        await records.update("ns", DIGEST, {"b": "2"}, ["labels.b"])
        assert records.cache.get(("ns", DIGEST)) == await stored()
        changed = await records.change_labels("ns", DIGEST, lambda old: {**old, "c": "3"})
        assert changed.labels == {"a": "1", "b": "2", "c": "3"}
        assert records.cache.get(("ns", DIGEST)) == await stored()
        unchanged = await records.change_labels("ns", DIGEST, dict)
        assert unchanged.updated_at == changed.updated_at  # nothing written

    try:
        asyncio.run(main())
    finally:
        db.close()
