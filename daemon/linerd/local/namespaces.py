"""Namespaces: create, update and delete publish containerd's namespace events."""

from __future__ import annotations

from typing import TYPE_CHECKING

from liner_api.containerd.events import namespace_pb2 as events

if TYPE_CHECKING:
    from linerd.core.types import Namespace
    from linerd.local.events import Publisher
    from linerd.metadata.namespaces import NamespaceStore


class Namespaces:
    def __init__(self, store: NamespaceStore, publisher: Publisher) -> None:
        self.store = store
        self._publisher = publisher

    async def get(self, name: str) -> Namespace:
        return await self.store.get(name)

    async def list(self) -> list[Namespace]:
        return await self.store.list()

    async def create(self, name: str, labels: dict[str, str]) -> Namespace:
        ns = await self.store.create(name, labels)
        self._publisher.publish(
            ns.name, "/namespaces/create", events.NamespaceCreate(name=ns.name, labels=ns.labels)
        )
        return ns

    async def update(self, name: str, labels: dict[str, str], paths: list[str]) -> Namespace:
        ns = await self.store.update(name, labels, paths)
        self._publisher.publish(
            ns.name, "/namespaces/update", events.NamespaceUpdate(name=ns.name, labels=ns.labels)
        )
        return ns

    async def delete(self, name: str) -> None:
        await self.store.delete(name)
        self._publisher.publish(name, "/namespaces/delete", events.NamespaceDelete(name=name))
