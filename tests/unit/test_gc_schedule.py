"""When the collector's background loop collects: batched and spaced, never skipped.

The loop is observed through its own steps (a collection started, finished; the wait it
asked for), never through the clock, so a slow or loaded machine gives the same answer."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from linerd.content.local import LocalStore
from linerd.content.store import ContentStore
from linerd.gc import collector as collector_module
from linerd.gc.collector import Collector, Stats
from linerd.metadata.content import ContentRecords
from linerd.metadata.db import Database, sqlite_url

pytestmark = pytest.mark.unit


class Gated(Collector):
    """A collector whose collections wait for `gate` and only count themselves; the waits
    its loop asks for are recorded and not slept."""

    def __init__(self, tmp: Path) -> None:
        db = Database(sqlite_url(tmp))
        super().__init__(db, ContentStore(LocalStore(tmp / "content"), ContentRecords(db)))
        self.interval = 3600.0  # no periodic collection during a test
        self.gate = asyncio.Event()
        self.started: asyncio.Queue[int] = asyncio.Queue()
        self.finished: asyncio.Queue[int] = asyncio.Queue()
        self.runs = 0
        self.waits: list[float] = []

    def _spacing(self) -> float:
        self.waits.append(super()._spacing())
        return 0.0

    async def collect(self) -> Stats:
        self.runs += 1
        self.started.put_nowait(self.runs)
        await self.gate.wait()
        self.finished.put_nowait(self.runs)
        return Stats()


def test_a_burst_during_a_collection_is_one_more_collection(tmp_path: Path) -> None:
    async def body() -> None:
        gc = Gated(tmp_path)
        task = asyncio.create_task(gc.run())
        try:
            gc.schedule()
            assert await gc.started.get() == 1
            for _ in range(5):  # a burst of deletes while the first collection runs
                gc.schedule()
            gc.gate.set()
            assert await gc.finished.get() == 1
            assert await gc.finished.get() == 2  # the burst's, none lost
            assert gc.runs == 2 and gc.started.qsize() == 1  # one for the whole burst
            # Nothing scheduled since: the loop waits for a schedule, not the clock.
            assert not gc._wake.is_set()
            assert len(gc.waits) == 2  # each scheduled collection waited its spacing
        finally:
            task.cancel()
            gc._db.close()

    asyncio.run(body())


def test_spacing_follows_the_last_collections_cost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [100.0]
    monkeypatch.setattr(collector_module.time, "monotonic", lambda: now[0])
    db = Database(sqlite_url(tmp_path))
    gc = Collector(db, ContentStore(LocalStore(tmp_path / "content"), ContentRecords(db)))
    gc.delay, gc.pause_ratio, gc.max_spacing = 0.01, 0.05, 0.5
    assert gc._spacing() == pytest.approx(0.01)  # none yet: only the batching delay
    gc._last_end, gc._last_cost = 100.0, 0.02  # took 20 ms: the next 400 ms after it
    assert gc._spacing() == pytest.approx(0.4)
    now[0] = 100.3
    assert gc._spacing() == pytest.approx(0.1)
    now[0] = 101.0
    assert gc._spacing() == pytest.approx(0.01)  # long past: the delay still batches
    gc._last_end, gc._last_cost = 101.0, 0.2  # 4 s by the ratio, capped
    assert gc._spacing() == pytest.approx(0.5)
    db.close()
