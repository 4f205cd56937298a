"""When the collector's background loop collects: batched and spaced, never skipped."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from linerd.content.local import LocalStore
from linerd.content.store import ContentStore
from linerd.gc.collector import Collector, Stats
from linerd.metadata.content import ContentRecords
from linerd.metadata.db import Database, sqlite_url

pytestmark = pytest.mark.unit


class Timed(Collector):
    """A collector whose collections take `cost` seconds and only count themselves."""

    cost = 0.02

    def __init__(self, tmp: Path) -> None:
        db = Database(sqlite_url(tmp))
        super().__init__(db, ContentStore(LocalStore(tmp / "content"), ContentRecords(db)))
        self.runs: list[float] = []

    async def collect(self) -> Stats:
        await asyncio.sleep(self.cost)
        self.runs.append(asyncio.get_running_loop().time())
        self._last_end = time.monotonic()
        self._last_cost = self.cost
        return Stats()


def test_scheduled_collections_are_batched_and_spaced(tmp_path: Path) -> None:
    gc = Timed(tmp_path)
    gc.delay, gc.pause_ratio, gc.max_spacing = 0.01, 0.05, 0.5  # 20 ms -> 400 ms apart

    async def body() -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.create_task(gc.run())
        start = loop.time()
        gc.schedule()
        await asyncio.sleep(0.1)
        assert len(gc.runs) == 1  # the first one after `delay`
        for _ in range(5):  # a burst of deletes
            gc.schedule()
            await asyncio.sleep(0.03)
        assert len(gc.runs) == 1
        await asyncio.sleep(0.6)
        assert len(gc.runs) == 2  # one collection for the whole burst, none lost
        assert gc.runs[1] - gc.runs[0] >= 0.4 - 0.02
        assert gc.runs[0] - start < 0.1
        await asyncio.sleep(0.6)
        assert len(gc.runs) == 2  # nothing scheduled: nothing collected
        task.cancel()

    asyncio.run(body())
    gc._db.close()
