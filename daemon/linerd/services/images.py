from __future__ import annotations

import grpc
from google.protobuf.empty_pb2 import Empty
from google.protobuf.message import Message

from liner_api.containerd.events import image_pb2 as events_pb2
from liner_api.containerd.services.images.v1 import images_pb2, images_pb2_grpc
from linerd import context
from linerd.core import filters
from linerd.core.types import Image
from linerd.events import Exchange
from linerd.gc.collector import Collector
from linerd.metadata.images import ImageStore
from linerd.services.convert import descriptor, from_descriptor, pack, timestamp


def _image(image: Image) -> images_pb2.Image:
    return images_pb2.Image(
        name=image.name,
        labels=image.labels,
        target=descriptor(image.target),
        created_at=timestamp(image.created_at),
        updated_at=timestamp(image.updated_at),
    )


def _from_image(image: images_pb2.Image) -> Image:
    return Image(name=image.name, target=from_descriptor(image.target), labels=dict(image.labels))


def _adaptor(image: Image) -> filters.Adaptor:
    fields = {
        "name": image.name,
        "target.digest": image.target.digest,
        "target.mediatype": image.target.media_type,
    }
    return filters.dict_adaptor(fields, image.labels, annotations=image.target.annotations)


class ImagesService(images_pb2_grpc.ImagesServicer):
    def __init__(self, store: ImageStore, gc: Collector, events: Exchange) -> None:
        self._store = store
        self._gc = gc
        self._events = events

    def _publish(self, namespace: str, topic: str, event: Message) -> None:
        any_ = pack(event)
        self._events.publish(namespace, topic, any_.type_url, any_.value)

    async def Get(
        self, request: images_pb2.GetImageRequest, ctx: grpc.aio.ServicerContext
    ) -> images_pb2.GetImageResponse:
        image = await self._store.get(context.namespace(), request.name)
        return images_pb2.GetImageResponse(image=_image(image))

    async def List(
        self, request: images_pb2.ListImagesRequest, ctx: grpc.aio.ServicerContext
    ) -> images_pb2.ListImagesResponse:
        match = filters.parse_all(list(request.filters))
        images = [
            _image(image)
            for image in await self._store.list(context.namespace())
            if match.match(_adaptor(image))
        ]
        return images_pb2.ListImagesResponse(images=images)

    async def Create(
        self, request: images_pb2.CreateImageRequest, ctx: grpc.aio.ServicerContext
    ) -> images_pb2.CreateImageResponse:
        namespace = context.namespace()
        image = await self._store.create(namespace, _from_image(request.image))
        self._publish(
            namespace,
            "/images/create",
            events_pb2.ImageCreate(name=image.name, labels=image.labels),
        )
        return images_pb2.CreateImageResponse(image=_image(image))

    async def Update(
        self, request: images_pb2.UpdateImageRequest, ctx: grpc.aio.ServicerContext
    ) -> images_pb2.UpdateImageResponse:
        namespace = context.namespace()
        image = await self._store.update(
            namespace, _from_image(request.image), list(request.update_mask.paths)
        )
        self._publish(
            namespace,
            "/images/update",
            events_pb2.ImageUpdate(name=image.name, labels=image.labels),
        )
        self._gc.schedule()  # the old target may be garbage now
        return images_pb2.UpdateImageResponse(image=_image(image))

    async def Delete(
        self, request: images_pb2.DeleteImageRequest, ctx: grpc.aio.ServicerContext
    ) -> Empty:
        namespace = context.namespace()
        await self._store.delete(namespace, request.name)
        self._publish(namespace, "/images/delete", events_pb2.ImageDelete(name=request.name))
        if request.sync:
            await self._gc.collect()
        else:
            self._gc.schedule()
        return Empty()
