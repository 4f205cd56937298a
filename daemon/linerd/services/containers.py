from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
from google.protobuf.any_pb2 import Any as AnyPb
from google.protobuf.empty_pb2 import Empty

from liner_api.containerd.services.containers.v1 import containers_pb2, containers_pb2_grpc
from linerd import context
from linerd.core import filters
from linerd.core.types import Container, Encoded
from linerd.local.containers import Containers
from linerd.services.convert import timestamp


def _any(value: Encoded | None) -> AnyPb | None:
    return AnyPb(type_url=value.type_url, value=value.value) if value is not None else None


def _encoded(value: AnyPb, present: bool) -> Encoded | None:
    return Encoded(value.type_url, value.value) if present else None


def to_pb(c: Container) -> containers_pb2.Container:
    return containers_pb2.Container(
        id=c.id,
        labels=c.labels,
        image=c.image,
        runtime=containers_pb2.Container.Runtime(name=c.runtime, options=_any(c.runtime_options)),
        spec=_any(c.spec),
        snapshotter=c.snapshotter,
        snapshot_key=c.snapshot_key,
        created_at=timestamp(c.created_at),
        updated_at=timestamp(c.updated_at),
        extensions={k: AnyPb(type_url=v.type_url, value=v.value) for k, v in c.extensions.items()},
        sandbox=c.sandbox,
    )


def from_pb(c: containers_pb2.Container) -> Container:
    return Container(
        id=c.id,
        runtime=c.runtime.name,
        spec=_encoded(c.spec, c.HasField("spec")),
        runtime_options=_encoded(c.runtime.options, c.runtime.HasField("options")),
        image=c.image,
        labels=dict(c.labels),
        snapshotter=c.snapshotter,
        snapshot_key=c.snapshot_key,
        sandbox=c.sandbox,
        extensions={k: Encoded(v.type_url, v.value) for k, v in c.extensions.items()},
    )


def _adaptor(c: Container) -> filters.Adaptor:
    fields = {
        "id": c.id,
        "image": c.image,
        "runtime.name": c.runtime,
        "snapshotter": c.snapshotter,
        "snapshotkey": c.snapshot_key,
    }
    return filters.dict_adaptor(fields, c.labels)


class ContainersService(containers_pb2_grpc.ContainersServicer):
    def __init__(self, local: Containers) -> None:
        self._local = local
        # Per namespace, id -> (record, its message) of the last List: a List answers with
        # the messages of the records that did not change since (the store hands out the
        # same record object until a write replaces it), built once instead of every time.
        self._built: dict[str, dict[str, tuple[Container, containers_pb2.Container]]] = {}

    async def _matching(
        self, request: containers_pb2.ListContainersRequest
    ) -> list[containers_pb2.Container]:
        namespace = context.namespace()
        records = await self._local.list(namespace, shared=True)
        # No await from here: two Lists never interleave over the namespace's messages.
        before = self._built.get(namespace, {})
        built: dict[str, tuple[Container, containers_pb2.Container]] = {}
        for c in records:  # what is still current (a deleted or replaced record drops out)
            hit = before.get(c.id)
            if hit is not None and hit[0] is c:
                built[c.id] = hit
        self._built[namespace] = built
        if request.filters:
            match = filters.parse_all(list(request.filters))
            records = [c for c in records if match.match(_adaptor(c))]
        for c in records:
            if c.id not in built:
                built[c.id] = (c, to_pb(c))
        return [built[c.id][1] for c in records]

    async def Get(
        self, request: containers_pb2.GetContainerRequest, ctx: grpc.aio.ServicerContext
    ) -> containers_pb2.GetContainerResponse:
        container = await self._local.get(context.namespace(), request.id)
        return containers_pb2.GetContainerResponse(container=to_pb(container))

    async def List(
        self, request: containers_pb2.ListContainersRequest, ctx: grpc.aio.ServicerContext
    ) -> containers_pb2.ListContainersResponse:
        return containers_pb2.ListContainersResponse(containers=await self._matching(request))

    async def ListStream(
        self,
        request: containers_pb2.ListContainersRequest,
        ctx: grpc.aio.ServicerContext,
    ) -> AsyncIterator[containers_pb2.ListContainerMessage]:
        for container in await self._matching(request):
            yield containers_pb2.ListContainerMessage(container=container)

    async def Create(
        self, request: containers_pb2.CreateContainerRequest, ctx: grpc.aio.ServicerContext
    ) -> containers_pb2.CreateContainerResponse:
        container = await self._local.create(context.namespace(), from_pb(request.container))
        return containers_pb2.CreateContainerResponse(container=to_pb(container))

    async def Update(
        self, request: containers_pb2.UpdateContainerRequest, ctx: grpc.aio.ServicerContext
    ) -> containers_pb2.UpdateContainerResponse:
        container = await self._local.update(
            context.namespace(), from_pb(request.container), list(request.update_mask.paths)
        )
        return containers_pb2.UpdateContainerResponse(container=to_pb(container))

    async def Delete(
        self, request: containers_pb2.DeleteContainerRequest, ctx: grpc.aio.ServicerContext
    ) -> Empty:
        await self._local.delete(context.namespace(), request.id)
        return Empty()
