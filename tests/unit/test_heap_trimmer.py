"""The heap trimmer: a trim after every burst, a full collection at most once a minute."""

from __future__ import annotations

import asyncio

import pytest

from linerd import server

pytestmark = pytest.mark.unit


def test_collects_at_most_once_per_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    runs: list[bool] = []
    monkeypatch.setattr(
        server._HeapTrimmer, "_collect_and_trim", staticmethod(lambda _t, c, _p: runs.append(c))
    )

    async def body() -> None:
        trimmer = server._HeapTrimmer(asyncio.get_running_loop())
        trimmer._trim = lambda _pad: 0
        for n, elapsed in enumerate((0.0, 1.0, server._HeapTrimmer.COLLECT_EVERY), 1):
            trimmer._collected -= elapsed  # as if that long had passed since the last one
            trimmer._run()
            while len(runs) < n:  # the executor's call
                await asyncio.sleep(0.01)

    asyncio.run(body())
    # the GIL-holding collection: the first burst's, then one a COLLECT_EVERY later
    assert runs == [True, False, True]


def test_a_collection_freezes_what_survives(monkeypatch: pytest.MonkeyPatch) -> None:
    """After its full collection the survivors are frozen (gc.freeze): the collections that
    allocation triggers walk only what came after; the next full collection walks all."""
    import gc
    import weakref

    paged_out: list[bool] = []
    monkeypatch.setattr(server.pageout, "page_out", lambda: paged_out.append(True) or True)

    class Cycle:
        def __init__(self) -> None:
            self.me = self

    trims: list[int] = []
    try:
        kept = Cycle()
        ref = weakref.ref(kept)
        server._HeapTrimmer._collect_and_trim(trims.append, True, True)
        assert gc.get_freeze_count() > 0 and trims == [0]
        del kept  # garbage now, in a cycle among the frozen
        gc.collect()  # what allocation triggers: frozen objects are left out
        assert ref() is not None
        server._HeapTrimmer._collect_and_trim(trims.append, False, False)  # a trim alone
        assert ref() is not None and trims == [0, 0]
        server._HeapTrimmer._collect_and_trim(trims.append, True, True)  # walks everything
        assert ref() is None and gc.get_freeze_count() > 0
        assert paged_out == [True, True]  # where asked, not with the trim alone
    finally:
        gc.unfreeze()


def test_pages_out_after_start_up_and_bulk_work_not_after_gc(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runs: list[tuple[bool, bool]] = []  # (collect, page_out) of each trim
    monkeypatch.setattr(
        server._HeapTrimmer,
        "_collect_and_trim",
        staticmethod(lambda _t, c, p: runs.append((c, p))),
    )

    async def body() -> None:
        trimmer = server._HeapTrimmer(asyncio.get_running_loop())
        trimmer._trim = lambda _pad: 0

        async def trim_after(*asks: bool) -> None:
            for page_out in asks:
                trimmer.schedule(page_out)
            assert trimmer._timer is not None
            trimmer._timer.cancel()
            n = len(runs)
            trimmer._run()
            while len(runs) == n:  # the executor's call
                await asyncio.sleep(0.01)

        await trim_after(True)  # start-up's
        await trim_after(False)  # a garbage collection's
        await trim_after(False, True)  # a collection's, then a pull's before it ran
        trimmer._collected -= server._HeapTrimmer.COLLECT_EVERY
        await trim_after(False)  # a collection's, a minute later: collects, no page-out

    asyncio.run(body())
    assert runs == [(True, True), (False, False), (False, True), (True, False)]
