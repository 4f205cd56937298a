"""Images: the image events, GC after an update or delete (an old target may be garbage), and
the signature policy on every record created or retargeted (ctr's client-side pull ends in
Create, or Update when the name exists): a refused image gets no record."""

from __future__ import annotations

from typing import TYPE_CHECKING

from liner_api.containerd.events import image_pb2 as events
from linerd.errdefs import AlreadyExists, NotFound
from linerd.local.policy import is_reference

if TYPE_CHECKING:
    from linerd.core.types import Image
    from linerd.gc.collector import Collector
    from linerd.local.events import Publisher
    from linerd.local.policy import PolicyGate
    from linerd.metadata.images import ImageStore


class Images:
    def __init__(
        self,
        store: ImageStore,
        gc: Collector,
        publisher: Publisher,
        policy: PolicyGate | None = None,
    ) -> None:
        self.store = store
        self._gc = gc
        self._publisher = publisher
        self._policy = policy

    async def get(self, namespace: str, name: str) -> Image:
        return await self.store.get(namespace, name)

    async def list(self, namespace: str) -> list[Image]:
        return await self.store.list(namespace)

    async def create(self, namespace: str, image: Image) -> Image:
        await self._admit(namespace, image, "create")
        created = await self.store.create(namespace, image)
        self._publisher.publish(
            namespace,
            "/images/create",
            events.ImageCreate(name=created.name, labels=created.labels),
        )
        return created

    async def put(self, namespace: str, wanted: list[Image]) -> None:
        """Each of `wanted` created, or brought to its target with its labels set, as
        `create` then `update` would (their events); in one transaction when no signature
        policy judges them (a policy judges each record before it is written, as those do)."""
        if self._policy is not None and self._policy.evaluator is not None:
            for image in wanted:
                await self._put_one(namespace, image)
            return
        updated = False
        for record, created in await self.store.put(namespace, wanted):
            if created is True:
                event = events.ImageCreate(name=record.name, labels=record.labels)
                self._publisher.publish(namespace, "/images/create", event)
            elif created is False:
                update = events.ImageUpdate(name=record.name, labels=record.labels)
                self._publisher.publish(namespace, "/images/update", update)
                updated = True
        if updated:
            self._gc.schedule()  # an old target may be garbage now

    async def _put_one(self, namespace: str, image: Image) -> None:
        try:
            await self.create(namespace, image)
            return
        except AlreadyExists:
            pass
        try:
            old = await self.store.get(namespace, image.name)
        except NotFound:  # deleted meanwhile: create it again
            await self.create(namespace, image)
            return
        if old.target.digest == image.target.digest and all(
            old.labels.get(k) == v for k, v in image.labels.items()
        ):
            return
        await self.update(namespace, image, ["target", *(f"labels.{k}" for k in image.labels)])

    async def update(self, namespace: str, image: Image, paths: list[str]) -> Image:
        if not paths or any(p == "target" or p.startswith("target.") for p in paths):
            current = await self.store.get(namespace, image.name)  # NotFound as update says
            if current.target.digest != image.target.digest:
                await self._admit(namespace, image, "update")
        updated = await self.store.update(namespace, image, paths)
        self._publisher.publish(
            namespace,
            "/images/update",
            events.ImageUpdate(name=updated.name, labels=updated.labels),
        )
        self._gc.schedule()  # the old target may be garbage now
        return updated

    async def _admit(self, namespace: str, image: Image, via: str) -> None:
        if self._policy is None or self._policy.evaluator is None:
            return
        if not is_reference(image.name):
            # A name that is no reference (the CRI's image id record, `sha256:<config>`) is
            # judged by its target: another name for what a reference-named record in this
            # namespace already holds (that record passed the policy) is admitted.
            for other in await self.store.list(namespace):
                if other.target.digest == image.target.digest and is_reference(other.name):
                    return
        await self._policy.admit(namespace, image.name, image.target, via=via)

    async def delete(self, namespace: str, name: str, sync: bool = False) -> None:
        """With `sync`, returns once what only the image held is collected."""
        await self.store.delete(namespace, name)
        self._publisher.publish(namespace, "/images/delete", events.ImageDelete(name=name))
        if sync:
            await self._gc.collect()
        else:
            self._gc.schedule()
