from __future__ import annotations

import grpc
from google.protobuf.empty_pb2 import Empty

from liner_api.containerd.services.images.v1 import images_pb2, images_pb2_grpc
from linerd import context
from linerd.core import filters
from linerd.core.types import Image
from linerd.local.images import Images
from linerd.services.convert import descriptor, from_descriptor, timestamp


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
    def __init__(self, local: Images) -> None:
        self._local = local

    async def Get(
        self, request: images_pb2.GetImageRequest, ctx: grpc.aio.ServicerContext
    ) -> images_pb2.GetImageResponse:
        image = await self._local.get(context.namespace(), request.name)
        return images_pb2.GetImageResponse(image=_image(image))

    async def List(
        self, request: images_pb2.ListImagesRequest, ctx: grpc.aio.ServicerContext
    ) -> images_pb2.ListImagesResponse:
        match = filters.parse_all(list(request.filters))
        images = [
            _image(image)
            for image in await self._local.list(context.namespace())
            if match.match(_adaptor(image))
        ]
        return images_pb2.ListImagesResponse(images=images)

    async def Create(
        self, request: images_pb2.CreateImageRequest, ctx: grpc.aio.ServicerContext
    ) -> images_pb2.CreateImageResponse:
        image = await self._local.create(context.namespace(), _from_image(request.image))
        return images_pb2.CreateImageResponse(image=_image(image))

    async def Update(
        self, request: images_pb2.UpdateImageRequest, ctx: grpc.aio.ServicerContext
    ) -> images_pb2.UpdateImageResponse:
        image = await self._local.update(
            context.namespace(), _from_image(request.image), list(request.update_mask.paths)
        )
        return images_pb2.UpdateImageResponse(image=_image(image))

    async def Delete(
        self, request: images_pb2.DeleteImageRequest, ctx: grpc.aio.ServicerContext
    ) -> Empty:
        await self._local.delete(context.namespace(), request.name, request.sync)
        return Empty()
