"""Snapshots, by snapshotter name ("" = the default): prepare, commit and remove publish
containerd's snapshot events; a removal schedules GC (parents may be unreferenced now)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from liner_api.containerd.events import snapshot_pb2 as events
from linerd.core.types import Mount, SnapshotInfo, SnapshotKind, Usage
from linerd.errdefs import InvalidArgument

if TYPE_CHECKING:
    from linerd.gc.collector import Collector
    from linerd.local.events import Publisher
    from linerd.snapshots.store import SnapshotStore

T = TypeVar("T")


class Snapshots:
    def __init__(
        self,
        stores: dict[str, SnapshotStore],
        default: str,
        gc: Collector,
        publisher: Publisher,
    ) -> None:
        self.stores = stores
        self.default = default
        self._gc = gc
        self._publisher = publisher

    def store(self, snapshotter: str) -> SnapshotStore:
        store = self.stores.get(snapshotter or self.default)
        if store is None:
            raise InvalidArgument(
                f"snapshotter {snapshotter!r} is not loaded (available: {', '.join(self.stores)})"
            )
        return store

    async def prepare(
        self,
        namespace: str,
        snapshotter: str,
        key: str,
        parent: str,
        labels: dict[str, str],
        lease: str | None,
    ) -> list[Mount]:
        store = self.store(snapshotter)
        mounts = await store.create(namespace, key, parent, labels, SnapshotKind.ACTIVE, lease)
        self._publisher.publish(
            namespace,
            "/snapshot/prepare",
            events.SnapshotPrepare(key=key, parent=parent, snapshotter=store.name),
        )
        return mounts

    async def prepare_with(
        self,
        namespace: str,
        snapshotter: str,
        key: str,
        parent: str,
        then: Callable[[Any], T],
    ) -> tuple[list[Mount], T]:
        """Prepare `key`, and `then(transaction)` in the transaction that records it (the
        record that holds the snapshot: local Containers.create_with_snapshot). No lease."""
        store = self.store(snapshotter)
        mounts, held = await store.create_with(
            namespace, key, parent, {}, SnapshotKind.ACTIVE, None, then
        )
        self._publisher.publish(
            namespace,
            "/snapshot/prepare",
            events.SnapshotPrepare(key=key, parent=parent, snapshotter=store.name),
        )
        return mounts, held  # type: ignore[return-value]  # held: T, `then` was given

    async def remove_with(
        self, namespace: str, snapshotter: str, key: str, first: Callable[[Any], T]
    ) -> tuple[T, bool, bool]:
        """`first(transaction)`, then remove `key` if it exists, in one transaction
        (local Containers.delete_with_snapshot); (what `first` returned, whether it
        existed, whether its removal may have left garbage: SnapshotStore.remove_with). The
        caller publishes its own events first, then calls `removed`."""
        held, existed, orphans = await self.store(snapshotter).remove_with(namespace, key, first)
        return held, existed, orphans  # type: ignore[return-value]  # `first` was given

    def removed(self, namespace: str, snapshotter: str, key: str, collect: bool = True) -> None:
        """After `remove_with` removed `key`: its event, and GC unless `collect` is False
        (nothing can have become garbage)."""
        store = self.store(snapshotter)
        self._publisher.publish(
            namespace, "/snapshot/remove", events.SnapshotRemove(key=key, snapshotter=store.name)
        )
        if collect:
            self._gc.schedule()

    async def view(
        self,
        namespace: str,
        snapshotter: str,
        key: str,
        parent: str,
        labels: dict[str, str],
        lease: str | None,
    ) -> list[Mount]:
        # containerd publishes no event for a view.
        return await self.store(snapshotter).create(
            namespace, key, parent, labels, SnapshotKind.VIEW, lease
        )

    async def mounts(self, namespace: str, snapshotter: str, key: str) -> list[Mount]:
        return await self.store(snapshotter).mounts(namespace, key)

    async def commit(
        self,
        namespace: str,
        snapshotter: str,
        name: str,
        key: str,
        labels: dict[str, str],
        lease: str | None,
    ) -> None:
        store = self.store(snapshotter)
        await store.commit(namespace, name, key, labels, lease)
        self._publisher.publish(
            namespace,
            "/snapshot/commit",
            events.SnapshotCommit(key=key, name=name, snapshotter=store.name),
        )

    async def remove(self, namespace: str, snapshotter: str, key: str) -> None:
        await self.store(snapshotter).remove(namespace, key)
        self.removed(namespace, snapshotter, key)

    async def stat(self, namespace: str, snapshotter: str, key: str) -> SnapshotInfo:
        return await self.store(snapshotter).stat(namespace, key)

    async def update(
        self,
        namespace: str,
        snapshotter: str,
        key: str,
        labels: dict[str, str],
        paths: list[str],
    ) -> SnapshotInfo:
        return await self.store(snapshotter).update(namespace, key, labels, paths)

    async def list(self, namespace: str, snapshotter: str) -> list[SnapshotInfo]:
        return await self.store(snapshotter).list(namespace)

    async def usage(self, namespace: str, snapshotter: str, key: str) -> Usage:
        return await self.store(snapshotter).usage(namespace, key)

    async def cleanup(self, snapshotter: str) -> None:
        await self.store(snapshotter).cleanup()
