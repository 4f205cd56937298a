"""Containers: the container events, GC after an update or delete (a snapshot or a
labelled reference may be left unreferenced), and the kept output of a deleted container."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import structlog
from google.protobuf.any_pb2 import Any as AnyPb

from liner_api.containerd.events import container_pb2 as events
from linerd.errdefs import NotFound
from linerd.gc.labels import has_gc_refs

if TYPE_CHECKING:
    from linerd.core.types import Container, Mount
    from linerd.gc.collector import Collector
    from linerd.local.events import Publisher
    from linerd.local.snapshots import Snapshots
    from linerd.metadata.containers import ContainerStore


# Update mask heads that can drop a reference GC follows (gc/collector.py container_roots).
_REFERENCING = ("labels", "snapshotkey")

log = structlog.get_logger("linerd.containers")

# Removes what the runtime kept of a container (its log file), given namespace and id.
# Called on the database thread once the record's delete committed (blocks, briefly).
Forget = Callable[[str, str], None]


class Containers:
    def __init__(
        self, store: ContainerStore, gc: Collector, publisher: Publisher, forget: Forget
    ) -> None:
        self.store = store
        self._gc = gc
        self._publisher = publisher
        self._forget = forget

    async def get(self, namespace: str, container_id: str) -> Container:
        return await self.store.get(namespace, container_id)

    async def list(self, namespace: str, *, shared: bool = False) -> list[Container]:
        """`shared`: read-only records (ContainerStore.list), for answers that only read."""
        return await self.store.list(namespace, shared=shared)

    async def records(self, namespace: str) -> Mapping[str, Container]:
        """The namespace's records by id, read-only; the same object while none changed
        (ContainerStore.records)."""
        return await self.store.records(namespace)

    async def create(self, namespace: str, container: Container) -> Container:
        created = await self.store.create(namespace, container)
        self._created(namespace, created)
        return created

    async def create_with_snapshot(
        self, namespace: str, container: Container, snapshots: Snapshots, parent: str
    ) -> tuple[Container, list[Mount]]:
        """The container's new active snapshot (its snapshotter and key, on the committed
        `parent`) and its record, in one transaction: one database round trip, and no lease
        to hold the snapshot until the record does (GC and a crash see both or neither)."""
        mounts, created = await snapshots.prepare_with(
            namespace,
            container.snapshotter,
            container.snapshot_key,
            parent,
            self.store.creator(namespace, container),
        )
        self._created(namespace, created)
        return created, mounts

    def _created(self, namespace: str, created: Container) -> None:
        options = created.runtime_options
        self._publisher.publish(
            namespace,
            "/containers/create",
            events.ContainerCreate(
                id=created.id,
                image=created.image,
                runtime=events.ContainerCreate.Runtime(
                    name=created.runtime,
                    options=(
                        AnyPb(type_url=options.type_url, value=options.value)
                        if options is not None
                        else None
                    ),
                ),
            ),
        )

    async def update(self, namespace: str, container: Container, paths: list[str]) -> Container:
        updated = await self.store.update(namespace, container, paths)
        self._publisher.publish(
            namespace,
            "/containers/update",
            events.ContainerUpdate(
                id=updated.id,
                image=updated.image,
                labels=updated.labels,
                snapshot_key=updated.snapshot_key,
            ),
        )
        # Only a container's snapshot key and labels reference anything GC collects: an
        # update of its spec or extensions alone (the CRI saving a container's state at
        # each start and stop) can leave no garbage.
        if not paths or any(p.split(".", 1)[0] in _REFERENCING for p in paths):
            self._gc.schedule()
        return updated

    async def delete(self, namespace: str, container_id: str) -> None:
        await self.store.delete(namespace, container_id, self._forgetting(namespace, container_id))
        self._deleted(namespace, container_id)
        self._gc.schedule()

    async def delete_owning(self, namespace: str, record: Container, snapshots: Snapshots) -> None:
        """Delete a record that owns its snapshot (the CRI's containers and pauses), with
        the snapshot it names in the same transaction."""
        if record.snapshot_key:
            await self.delete_with_snapshot(
                namespace, record.id, snapshots, record.snapshotter, record.snapshot_key
            )
        else:
            await self.delete(namespace, record.id)

    async def delete_with_snapshot(
        self, namespace: str, container_id: str, snapshots: Snapshots, snapshotter: str, key: str
    ) -> None:
        """Delete the record and its snapshot in one transaction (ctr's `rm` with
        snapshot cleanup, in one database round trip); either may be gone already. NotFound
        when neither existed. GC is scheduled only where something may have become garbage:
        not for a container that held only that snapshot (no reference labels) whose parent
        still has other children (a CRI pod's containers on one image)."""
        deleted, removed, orphans = await snapshots.remove_with(
            namespace,
            snapshotter,
            key,
            self.store.deleter(namespace, container_id, self._forgetting(namespace, container_id)),
        )
        if deleted is not None:
            self._deleted(namespace, container_id)
        if removed:
            held_only_it = deleted is None or (
                (deleted.snapshotter, deleted.snapshot_key) in (("", ""), (snapshotter, key))
                and not has_gc_refs(deleted.labels)
            )
            snapshots.removed(namespace, snapshotter, key, collect=orphans or not held_only_it)
        elif deleted is not None:
            self._gc.schedule()
        else:
            raise NotFound(f"container {container_id!r} not found")

    def _forgetting(self, namespace: str, container_id: str) -> Callable[[], None]:
        def forget() -> None:
            # The record is gone whatever happens here: a log left behind is only logged.
            try:
                self._forget(namespace, container_id)
            except Exception as e:
                log.warning("removing a container's log", id=container_id, error=str(e))

        return forget

    def _deleted(self, namespace: str, container_id: str) -> None:
        self._publisher.publish(
            namespace, "/containers/delete", events.ContainerDelete(id=container_id)
        )
