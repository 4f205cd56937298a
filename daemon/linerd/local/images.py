"""Images: the image events, and GC after an update or delete (an old target may be garbage)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from liner_api.containerd.events import image_pb2 as events

if TYPE_CHECKING:
    from linerd.core.types import Image
    from linerd.gc.collector import Collector
    from linerd.local.events import Publisher
    from linerd.metadata.images import ImageStore


class Images:
    def __init__(self, store: ImageStore, gc: Collector, publisher: Publisher) -> None:
        self.store = store
        self._gc = gc
        self._publisher = publisher

    async def get(self, namespace: str, name: str) -> Image:
        return await self.store.get(namespace, name)

    async def list(self, namespace: str) -> list[Image]:
        return await self.store.list(namespace)

    async def create(self, namespace: str, image: Image) -> Image:
        created = await self.store.create(namespace, image)
        self._publisher.publish(
            namespace,
            "/images/create",
            events.ImageCreate(name=created.name, labels=created.labels),
        )
        return created

    async def update(self, namespace: str, image: Image, paths: list[str]) -> Image:
        updated = await self.store.update(namespace, image, paths)
        self._publisher.publish(
            namespace,
            "/images/update",
            events.ImageUpdate(name=updated.name, labels=updated.labels),
        )
        self._gc.schedule()  # the old target may be garbage now
        return updated

    async def delete(self, namespace: str, name: str, sync: bool = False) -> None:
        """With `sync`, returns once what only the image held is collected."""
        await self.store.delete(namespace, name)
        self._publisher.publish(namespace, "/images/delete", events.ImageDelete(name=name))
        if sync:
            await self._gc.collect()
        else:
            self._gc.schedule()
