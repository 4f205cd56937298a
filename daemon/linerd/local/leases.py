"""Leases: removing one, or a resource from one, can leave garbage, so GC is scheduled."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from linerd.core.types import Lease, LeaseResource
    from linerd.gc.collector import Collector
    from linerd.metadata.leases import LeaseStore


class Leases:
    def __init__(self, store: LeaseStore, gc: Collector) -> None:
        self.store = store
        self._gc = gc

    async def create(self, namespace: str, lease_id: str, labels: dict[str, str]) -> Lease:
        return await self.store.create(namespace, lease_id, labels)

    async def delete(self, namespace: str, lease_id: str, sync: bool = False) -> None:
        """With `sync`, returns once what the lease held is collected (containerd's SyncDelete)."""
        await self.store.delete(namespace, lease_id)
        if sync:
            await self._gc.collect()
        else:
            self._gc.schedule()

    async def list(self, namespace: str) -> list[Lease]:
        return await self.store.list(namespace)

    async def add_resource(self, namespace: str, lease_id: str, resource: LeaseResource) -> None:
        await self.store.add_resource(namespace, lease_id, resource)

    async def delete_resource(self, namespace: str, lease_id: str, resource: LeaseResource) -> None:
        await self.store.delete_resource(namespace, lease_id, resource)
        self._gc.schedule()

    async def list_resources(self, namespace: str, lease_id: str) -> list[LeaseResource]:
        return await self.store.list_resources(namespace, lease_id)
