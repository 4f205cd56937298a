"""A container's snapshot and record written and removed in one transaction (the CRI's
CreateContainer and RemoveContainer): both or neither, their events in containerd's order,
GC only where something may have become garbage."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from linerd.content.local import LocalStore
from linerd.content.store import ContentStore
from linerd.core.types import Container, Encoded, SnapshotKind
from linerd.errdefs import AlreadyExists, FailedPrecondition, NotFound
from linerd.events import Exchange
from linerd.gc.collector import Collector
from linerd.local.containers import Containers
from linerd.local.events import Publisher
from linerd.local.snapshots import Snapshots
from linerd.metadata.containers import ContainerStore
from linerd.metadata.content import ContentRecords
from linerd.metadata.db import Database, sqlite_url
from linerd.snapshots.backends import OverlayBackend
from linerd.snapshots.store import SnapshotsCollectable, SnapshotStore

pytestmark = pytest.mark.unit


@dataclasses.dataclass
class World:
    db: Database
    root: Path
    store: SnapshotStore
    containers: Containers
    snapshots: Snapshots
    topics: list[str]
    gc_asked: list[str]
    forgotten: list[str]
    gc: Collector


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    db = Database(sqlite_url(tmp_path))
    db.migrate()
    root = tmp_path / "snapshots"
    store = SnapshotStore(db, OverlayBackend(), root)
    gc = Collector(db, ContentStore(LocalStore(tmp_path / "content"), ContentRecords(db)))
    asked: list[str] = []
    gc.observe(asked.append)
    topics: list[str] = []

    class Recording(Exchange):
        def publish(self, namespace: str, topic: str, type_url: str, payload: bytes) -> None:
            topics.append(topic)

    publisher = Publisher(Recording())
    forgotten: list[str] = []

    def forget(namespace: str, container_id: str) -> None:
        forgotten.append(container_id)

    snapshots = Snapshots({"overlayfs": store}, "overlayfs", gc, publisher)
    containers = Containers(ContainerStore(db), gc, publisher, forget)
    try:
        yield World(db, root, store, containers, snapshots, topics, asked, forgotten, gc)
    finally:
        db.close()


def record(container_id: str) -> Container:
    return Container(
        id=container_id,
        runtime="io.containerd.runc.v2",
        spec=Encoded("types.containerd.io/opencontainers/runtime-spec/1/Spec", b"{}"),
        snapshotter="overlayfs",
        snapshot_key=container_id,
    )


async def committed_parent(w: World) -> str:
    await w.store.create("ns", "layer", "", {}, SnapshotKind.ACTIVE, None)
    await w.store.commit("ns", "layer-c", "layer", {}, None)
    w.topics.clear()
    return "layer-c"


def dirs(w: World) -> list[str]:
    return sorted(p.name for p in w.root.iterdir())


def test_created_together_in_order_without_gc(world: World) -> None:
    w = world

    async def body() -> None:
        parent = await committed_parent(w)
        created, mounts = await w.containers.create_with_snapshot(
            "ns", record("c1"), w.snapshots, parent
        )
        assert created.id == "c1" and created.snapshot_key == "c1"
        assert mounts and mounts[0].type == "overlay"
        assert mounts == await w.snapshots.mounts("ns", "overlayfs", "c1")
        info = await w.snapshots.stat("ns", "overlayfs", "c1")
        assert (info.kind, info.parent) == (SnapshotKind.ACTIVE, parent)
        assert (await w.containers.get("ns", "c1")).snapshot_key == "c1"
        assert w.topics == ["/snapshot/prepare", "/containers/create"]
        assert w.gc_asked == []  # no lease was taken, so none is dropped
        assert dirs(w) == ["1", "2"]

    asyncio.run(body())


def test_a_failing_record_leaves_no_snapshot(world: World) -> None:
    w = world

    async def body() -> None:
        parent = await committed_parent(w)
        await w.containers.create_with_snapshot("ns", record("c1"), w.snapshots, parent)
        w.topics.clear()
        # Same container id, another snapshot key: the record's insert fails after the
        # snapshot's; both roll back, and no directory is left.
        again = dataclasses.replace(record("c1"), snapshot_key="other")
        with pytest.raises(AlreadyExists):
            await w.containers.create_with_snapshot("ns", again, w.snapshots, parent)
        with pytest.raises(NotFound):
            await w.snapshots.stat("ns", "overlayfs", "other")
        # A snapshot key already taken: nothing of the record either.
        with pytest.raises(AlreadyExists):
            await w.containers.create_with_snapshot(
                "ns", dataclasses.replace(record("c2"), snapshot_key="c1"), w.snapshots, parent
            )
        with pytest.raises(NotFound):
            await w.containers.get("ns", "c2")
        assert w.topics == []
        assert dirs(w) == ["1", "2"]

    asyncio.run(body())


def test_removed_together_in_order(world: World) -> None:
    w = world

    async def body() -> None:
        parent = await committed_parent(w)
        await w.containers.create_with_snapshot("ns", record("c1"), w.snapshots, parent)
        await w.containers.create_with_snapshot("ns", record("c2"), w.snapshots, parent)
        w.topics.clear()
        await w.containers.delete_with_snapshot("ns", "c1", w.snapshots, "overlayfs", "c1")
        assert w.topics == ["/containers/delete", "/snapshot/remove"]
        # The parent still has a child (c2's snapshot): nothing can have become garbage.
        assert w.gc_asked == []
        assert w.forgotten == ["c1"]  # the runtime's log, once the delete committed
        with pytest.raises(NotFound):
            await w.containers.get("ns", "c1")
        with pytest.raises(NotFound):
            await w.snapshots.stat("ns", "overlayfs", "c1")
        await w.store.settle()
        assert dirs(w) == ["1", "3"]
        # Either may be gone already: the other still goes.
        await w.snapshots.remove("ns", "overlayfs", "c2")
        w.topics.clear()
        await w.containers.delete_with_snapshot("ns", "c2", w.snapshots, "overlayfs", "c2")
        assert w.topics == ["/containers/delete"]
        with pytest.raises(NotFound):
            await w.containers.delete_with_snapshot("ns", "c2", w.snapshots, "overlayfs", "c2")
        await w.containers.create("ns", record("c3"))  # its snapshot was never made
        await w.snapshots.prepare("ns", "overlayfs", "lone", parent, {}, None)
        await w.containers.delete_with_snapshot("ns", "c3", w.snapshots, "overlayfs", "lone")
        with pytest.raises(NotFound):
            await w.snapshots.stat("ns", "overlayfs", "lone")

    asyncio.run(body())


def test_gc_after_a_removal_only_where_garbage_may_be_left(world: World) -> None:
    w = world

    w.gc.register_kind("snapshots", SnapshotsCollectable({"overlayfs": w.store}))

    async def body() -> None:
        parent = await committed_parent(w)
        for cid in ("c1", "c2", "c3"):
            await w.containers.create_with_snapshot("ns", record(cid), w.snapshots, parent)
        w.gc_asked.clear()
        await w.containers.delete_with_snapshot("ns", "c1", w.snapshots, "overlayfs", "c1")
        assert w.gc_asked == []  # siblings hold the parent
        assert await w.db.run(w.gc.unreachable) == []  # indeed: no garbage was left
        # A container whose labels reference content: dropping them may leave garbage.
        await w.containers.update(
            "ns",
            dataclasses.replace(
                record("c2"), labels={"containerd.io/gc.ref.content.x": "sha256:" + "a" * 64}
            ),
            ["labels"],
        )
        w.gc_asked.clear()
        await w.containers.delete_with_snapshot("ns", "c2", w.snapshots, "overlayfs", "c2")
        assert w.gc_asked == ["schedule"]
        # The parent's last child: the parent may be unreferenced now.
        w.gc_asked.clear()
        await w.containers.delete_with_snapshot("ns", "c3", w.snapshots, "overlayfs", "c3")
        assert w.gc_asked == ["schedule"]
        # A snapshot removed after its record went: only its parent decides.
        await w.containers.create_with_snapshot("ns", record("c4"), w.snapshots, parent)
        await w.containers.create_with_snapshot("ns", record("c5"), w.snapshots, parent)
        await w.containers.delete("ns", "c4")
        w.gc_asked.clear()
        await w.snapshots.remove("ns", "overlayfs", "c4")
        assert w.gc_asked == ["schedule"]  # a plain Remove always asks (containerd's API)
        w.gc_asked.clear()
        await w.containers.delete_with_snapshot("ns", "c5", w.snapshots, "overlayfs", "c5")
        assert w.gc_asked == ["schedule"]
        assert await w.store.list("ns") == [await w.snapshots.stat("ns", "overlayfs", parent)]
        # Nothing holds the parent now (no image here): the collection asked takes it, and
        # its directory goes once the background removals are done.
        await w.gc.collect()
        assert await w.store.list("ns") == []
        await w.store.settle()
        assert dirs(w) == []

    asyncio.run(body())


def test_a_refused_snapshot_removal_keeps_the_record(world: World) -> None:
    w = world

    async def body() -> None:
        await w.containers.create("ns", dataclasses.replace(record("c1"), snapshot_key="layer"))
        await committed_parent(w)  # "layer" committed as "layer-c"; a child of it below
        await w.containers.create_with_snapshot("ns", record("c2"), w.snapshots, "layer-c")
        with pytest.raises(FailedPrecondition):
            await w.containers.delete_with_snapshot("ns", "c1", w.snapshots, "overlayfs", "layer-c")
        assert (await w.containers.get("ns", "c1")).id == "c1"
        assert w.forgotten == []  # rolled back: the log stays with the record

    asyncio.run(body())


def test_gc_only_after_updates_that_can_drop_a_reference(world: World) -> None:
    w = world

    async def body() -> None:
        c = await w.containers.create("ns", record("c1"))
        c.extensions = {"x": Encoded("t", b"1")}
        await w.containers.update("ns", c, ["extensions.x"])
        await w.containers.update("ns", c, ["spec", "image"])
        assert w.gc_asked == []
        for paths in (["labels.a"], ["snapshotkey"], [], ["labels"]):
            await w.containers.update("ns", c, paths)
        assert w.gc_asked == ["schedule"] * 4

    asyncio.run(body())
