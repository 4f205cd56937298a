"""The record caches of the metadata stores: hits skip the database, every change is seen."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from sqlalchemy import Connection

from linerd.content.local import LocalStore
from linerd.content.store import ContentStore
from linerd.core.types import Container, Descriptor, Encoded, Image, SnapshotKind
from linerd.errdefs import AlreadyExists, NotFound
from linerd.gc.collector import Collector
from linerd.metadata.cache import RecordCache
from linerd.metadata.containers import ContainerStore
from linerd.metadata.content import ContentRecords
from linerd.metadata.db import Database, sqlite_url
from linerd.metadata.images import ImageStore
from linerd.metadata.namespaces import NamespaceStore
from linerd.snapshots.backends import OverlayBackend
from linerd.snapshots.store import SnapshotStore

pytestmark = pytest.mark.unit
T = TypeVar("T")
DIGEST = "sha256:" + "ab" * 32


class CountingDatabase(Database):
    """Counts transactions, to tell a cache hit from a read."""

    transactions = 0

    def _transaction(self, fn):  # type: ignore[no-untyped-def]
        self.transactions += 1
        return super()._transaction(fn)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[CountingDatabase]:
    database = CountingDatabase(sqlite_url(tmp_path))
    database.migrate()
    yield database
    database.close()


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro

    return asyncio.run(main())


def test_record_cache_is_bounded_and_hands_out_copies() -> None:
    cache: RecordCache[str, dict[str, str]] = RecordCache(dict, limit=2)
    got = cache.put("a", {"k": "v"})
    got["k"] = "changed"
    assert cache.get("a") == {"k": "v"}
    cache.put("b", {})
    cache.put("c", {})
    assert cache.get("a") is None and len(cache) == 2
    cache.drop("b")
    assert cache.get("b") is None and cache.get("c") == {}


def test_content_info_cached_until_updated_deleted_or_collected(
    db: CountingDatabase, tmp_path: Path
) -> None:
    records = ContentRecords(db)
    store = ContentStore(LocalStore(tmp_path / "content"), records)
    gc = Collector(db, store)

    async def body() -> None:
        await records.add("ns", DIGEST, 3, {"a": "1"}, None)
        first = await records.get("ns", DIGEST)
        first.labels["a"] = "mutated by a caller"
        before = db.transactions
        assert (await records.get("ns", DIGEST)).labels == {"a": "1"}
        assert db.transactions == before  # a hit
        await records.update("ns", DIGEST, {"a": "2"}, ["labels.a"])
        assert (await records.get("ns", DIGEST)).labels == {"a": "2"}
        await records.delete("ns", DIGEST)
        with pytest.raises(NotFound):
            await records.get("ns", DIGEST)
        # Recorded again, read (cached), then collected: the collection forgets it.
        await records.add("ns", DIGEST, 3, {}, None)
        assert (await records.get("ns", DIGEST)).size == 3
        await gc.collect()
        with pytest.raises(NotFound):
            await records.get("ns", DIGEST)

    run(body())


def test_container_cached_until_updated_or_deleted(db: CountingDatabase) -> None:
    store = ContainerStore(db)
    spec = Encoded("types.containerd.io/opencontainers/runtime-spec/1/Spec", b"{}")

    async def body() -> None:
        await store.create("ns", Container(id="c", runtime="r", spec=spec, labels={"x": "1"}))
        (await store.get("ns", "c")).labels["x"] = "mutated by a caller"
        before = db.transactions
        assert (await store.get("ns", "c")).labels == {"x": "1"}
        assert db.transactions == before
        await store.update("ns", Container(id="c", runtime="", spec=None, labels={"x": "2"}),
                           ["labels"])  # fmt: skip
        before = db.transactions
        assert (await store.get("ns", "c")).labels == {"x": "2"}  # the update's, kept
        assert db.transactions == before
        (await store.get("ns", "c")).labels["x"] = "mutated by a caller"
        assert (await store.get("ns", "c")).labels == {"x": "2"}
        with pytest.raises(NotFound):  # a failed update keeps nothing
            await store.update("ns", Container(id="gone", runtime="", spec=None), ["labels"])
        with pytest.raises(NotFound):
            await store.get("ns", "gone")
        await store.delete("ns", "c")
        with pytest.raises(NotFound):
            await store.get("ns", "c")
        await store.create("ns", Container(id="c", runtime="r2", spec=spec))
        assert (await store.get("ns", "c")).runtime == "r2"

    run(body())


def test_after_commit_runs_only_once_committed(db: CountingDatabase) -> None:
    seen: list[str] = []

    def ok(conn: Connection) -> None:
        db.after_commit(conn, lambda: seen.append("ok"))
        assert seen == []  # not before the commit

    def fails(conn: Connection) -> None:
        db.after_commit(conn, lambda: seen.append("rolled back"))
        raise NotFound("x")

    db.run_sync(ok)
    with pytest.raises(NotFound):
        db.run_sync(fails)
    db.run_sync(lambda c: None)
    assert seen == ["ok"]


def test_created_container_is_cached(db: CountingDatabase) -> None:
    store = ContainerStore(db)
    spec = Encoded("types.containerd.io/opencontainers/runtime-spec/1/Spec", b"{}")

    async def body() -> None:
        created = await store.create("ns", Container(id="c", runtime="r", spec=spec))
        created.labels["x"] = "mutated by a caller"
        before = db.transactions
        got = await store.get("ns", "c")
        assert db.transactions == before
        assert (got.runtime, got.labels) == ("r", {})
        with pytest.raises(AlreadyExists):
            await store.create("ns", Container(id="c", runtime="other", spec=spec))
        assert (await store.get("ns", "c")).runtime == "r"

    run(body())


def test_container_list_kept_by_every_write(db: CountingDatabase) -> None:
    """After the first List of a namespace, Lists skip the database and see every commit
    (in id order, as the query), none that rolled back, and hand out copies."""
    store = ContainerStore(db)
    spec = Encoded("types.containerd.io/opencontainers/runtime-spec/1/Spec", b"{}")

    def ids(records: list[Container]) -> list[str]:
        return [c.id for c in records]

    async def body() -> None:
        await store.create("ns", Container(id="b", runtime="r", spec=spec))
        await store.create("other", Container(id="a", runtime="r", spec=spec))
        assert ids(await store.list("ns")) == ["b"]
        before = db.transactions
        listed = await store.list("ns")
        assert db.transactions == before
        listed[0].labels["x"] = "mutated by a caller"
        await store.create("ns", Container(id="c", runtime="r", spec=spec))
        await store.create("ns", Container(id="a", runtime="r", spec=spec))
        await store.update("ns", Container(id="b", runtime="", spec=None, labels={"x": "2"}),
                           ["labels"])  # fmt: skip
        with pytest.raises(AlreadyExists):  # rolled back: the list keeps what it had
            await store.create("ns", Container(id="c", runtime="other", spec=spec))
        await store.delete("ns", "c")
        before = db.transactions
        cached = await store.list("ns")
        assert db.transactions == before
        assert ids(cached) == ["a", "b"]
        assert [(c.runtime, c.labels) for c in cached] == [("r", {}), ("r", {"x": "2"})]
        fresh = await ContainerStore(db).list("ns")  # what the database says
        assert [dataclasses.asdict(c) for c in fresh] == [dataclasses.asdict(c) for c in cached]
        assert ids(await store.list("other")) == ["a"]

    run(body())


def test_generation_moves_once_a_kept_list_shows_the_write(db: CountingDatabase) -> None:
    """A reader keeps what it listed while the generation it read before the List stays
    (cri/records.py). The kept List shows a write only after its commit, so a List taken
    while a write is in flight, under the generation that write began, must not stay."""
    store = ContainerStore(db)
    spec = Encoded("types.containerd.io/opencontainers/runtime-spec/1/Spec", b"{}")

    async def body() -> None:
        await store.list("ns")  # kept from now on
        seen: list[tuple[int, list[str]]] = []
        original = store._relist

        def relist(namespace: str, container_id: str, record: Container | None) -> None:
            # the write has begun and committed, its change is not in the kept list yet:
            # what a reader on another thread could read at this moment
            seen.append((store.generation("ns"), [c.id for c in store._lists["ns"].values()]))
            original(namespace, container_id, record)

        store._relist = relist  # type: ignore[method-assign]
        await store.create("ns", Container(id="a", runtime="r", spec=spec))
        ((generation, listed),) = seen
        assert listed == []  # a reader's List under `generation` misses "a"...
        assert store.generation("ns") != generation  # ...so it is not reused
        assert [c.id for c in await store.list("ns")] == ["a"]

    run(body())


def test_image_cached_until_updated_or_deleted(db: CountingDatabase) -> None:
    store = ImageStore(db)
    target = Descriptor("application/vnd.oci.image.manifest.v1+json", DIGEST, 10)

    async def body() -> None:
        await store.create("ns", Image(name="i", target=target))
        assert (await store.get("ns", "i")).target.size == 10
        before = db.transactions
        (await store.get("ns", "i")).target.annotations["x"] = "mutated by a caller"
        assert (await store.get("ns", "i")).target.annotations == {}
        assert db.transactions == before
        bigger = Descriptor(target.media_type, DIGEST, 20)
        await store.update("ns", Image(name="i", target=bigger), ["target"])
        assert (await store.get("ns", "i")).target.size == 20
        await store.delete("ns", "i")
        with pytest.raises(NotFound):
            await store.get("ns", "i")

    run(body())


def test_image_put_creates_updates_or_leaves_in_one_transaction(db: CountingDatabase) -> None:
    store = ImageStore(db)
    target = Descriptor("application/vnd.oci.image.manifest.v1+json", DIGEST, 10)
    other = Descriptor(target.media_type, "sha256:" + "cd" * 32, 30)

    async def body() -> None:
        await store.create("ns", Image(name="old", target=target, labels={"keep": "1"}))
        assert (await store.get("ns", "old")).target.size == 10  # now cached
        before = db.transactions
        put = await store.put(
            "ns",
            [
                Image(name="new", target=target, labels={"a": "b"}),
                Image(name="old", target=other, labels={"a": "b"}),
            ],
        )
        assert db.transactions == before + 1
        assert [(i.name, created) for i, created in put] == [("new", True), ("old", False)]
        old = await store.get("ns", "old")  # the write dropped the cached record
        assert (old.target.digest, old.labels) == (other.digest, {"keep": "1", "a": "b"})
        generation = store.generation("ns")
        again = await store.put("ns", [Image(name="new", target=target, labels={"a": "b"})])
        assert [created for _, created in again] == [None]
        assert store.generation("ns") == generation  # nothing written: the CRI's view stays

    run(body())


def test_namespace_labels_cached_until_changed(db: CountingDatabase) -> None:
    store = NamespaceStore(db)

    async def body() -> None:
        assert (await store.get("n")).labels == {}  # unknown: no labels, nothing created
        await store.create("n", {"a": "1"})
        assert (await store.get("n")).labels == {"a": "1"}
        before = db.transactions
        assert (await store.get("n")).labels == {"a": "1"}
        assert db.transactions == before
        await store.update("n", {"a": "2"}, [])
        assert (await store.get("n")).labels == {"a": "2"}
        await store.delete("n")
        assert (await store.get("n")).labels == {}

    run(body())


def test_prepared_snapshot_mounts_cached_until_removed(
    db: CountingDatabase, tmp_path: Path
) -> None:
    store = SnapshotStore(db, OverlayBackend(), tmp_path / "snapshots")

    async def body() -> None:
        prepared = await store.create("ns", "k", "", {}, SnapshotKind.ACTIVE, None)
        prepared.clear()  # a caller's copy
        before = db.transactions
        got = await store.mounts("ns", "k")
        assert db.transactions == before
        assert len(got) == 1 and got[0].type in ("bind", "overlay")
        with pytest.raises(AlreadyExists):  # a failed Prepare of the same key changes nothing
            await store.create("ns", "k", "", {}, SnapshotKind.ACTIVE, None)
        assert await store.mounts("ns", "k") == got
        with pytest.raises(NotFound):  # rolled back (no such lease): nothing cached
            await store.create("ns", "x", "", {}, SnapshotKind.ACTIVE, "no-such-lease")
        with pytest.raises(NotFound):
            await store.mounts("ns", "x")
        await store.remove("ns", "k")
        with pytest.raises(NotFound):
            await store.mounts("ns", "k")

    run(body())


def test_snapshot_stat_cached_until_updated_committed_or_removed(
    db: CountingDatabase, tmp_path: Path
) -> None:
    store = SnapshotStore(db, OverlayBackend(), tmp_path / "snapshots")

    async def body() -> None:
        await store.create("ns", "k", "", {"a": "1"}, SnapshotKind.ACTIVE, None)
        first = await store.stat("ns", "k")
        first.labels["a"] = "mutated by a caller"
        before = db.transactions
        assert (await store.stat("ns", "k")).labels == {"a": "1"}
        assert db.transactions == before
        await store.update("ns", "k", {"a": "2"}, ["labels.a"])
        assert (await store.stat("ns", "k")).labels == {"a": "2"}
        await store.commit("ns", "c", "k", {}, None)
        with pytest.raises(NotFound):
            await store.stat("ns", "k")
        assert (await store.stat("ns", "c")).kind is SnapshotKind.COMMITTED
        await store.remove("ns", "c")
        with pytest.raises(NotFound):
            await store.stat("ns", "c")

    run(body())


def test_container_copy_keeps_every_field() -> None:
    """The copy spells the fields out: a field added to Container must be added there."""
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    values = {
        "id": "c",
        "runtime": "r",
        "spec": Encoded("t", b"s"),
        "runtime_options": Encoded("o", b"p"),
        "image": "i",
        "labels": {"k": "v"},
        "snapshotter": "overlayfs",
        "snapshot_key": "key",
        "sandbox": "sb",
        "extensions": {"e": Encoded("x", b"y")},
        "created_at": now,
        "updated_at": now,
    }
    assert {f.name for f in dataclasses.fields(Container)} == set(values)
    original = Container(**values)  # type: ignore[arg-type]
    dup = original.copy()
    assert dataclasses.asdict(dup) == dataclasses.asdict(original)
    assert dup.labels is not original.labels and dup.extensions is not original.extensions
