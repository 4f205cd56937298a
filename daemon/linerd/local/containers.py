"""Containers: the container events, GC after an update or delete (a snapshot or a
labelled reference may be left unreferenced), and the kept output of a deleted container."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING

from google.protobuf.any_pb2 import Any as AnyPb

from liner_api.containerd.events import container_pb2 as events

if TYPE_CHECKING:
    from linerd.core.types import Container
    from linerd.gc.collector import Collector
    from linerd.local.events import Publisher
    from linerd.metadata.containers import ContainerStore


# Removes what the runtime kept of a container (its log file), given namespace and id.
Forget = Callable[[str, str], Awaitable[None]]


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
        return created

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
        self._gc.schedule()
        return updated

    async def delete(self, namespace: str, container_id: str) -> None:
        await self.store.delete(namespace, container_id)
        await self._forget(namespace, container_id)
        self._publisher.publish(
            namespace, "/containers/delete", events.ContainerDelete(id=container_id)
        )
        self._gc.schedule()
