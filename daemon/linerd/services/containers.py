from __future__ import annotations

from collections.abc import AsyncIterator, Mapping

import grpc
from google.protobuf.any_pb2 import Any as AnyPb
from google.protobuf.empty_pb2 import Empty

from liner_api.containerd.services.containers.v1 import containers_pb2, containers_pb2_grpc
from linerd import context
from linerd.core import filters
from linerd.core.types import Container, Encoded
from linerd.local.containers import Containers
from linerd.services.convert import answering_bytes, framed, timestamp

# List and ListStream answer with serializations (ContainersService._selected).
add_containers_to_server = answering_bytes(
    containers_pb2_grpc.add_ContainersServicer_to_server, "List", "ListStream"
)


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
        # Per namespace, id -> (record, its Container serialized as one element of a List
        # answer) of the last List: the store hands out the same record object until a write
        # replaces it, so a List serializes only the records that changed since.
        self._framed: dict[str, dict[str, tuple[Container, bytes]]] = {}
        # Per namespace, (the records of the last unfiltered List, its answer): the store's
        # records mapping is the same object while nothing changed (ContainerStore.records).
        self._answers: dict[str, tuple[Mapping[str, Container], bytes]] = {}

    def _frames(self, namespace: str, records: Mapping[str, Container]) -> list[bytes]:
        """Each record's Container serialized as one element of a List answer (in order),
        those of unchanged records kept from the last List. Called with no await between
        reading `records` and answering: two Lists never interleave over the frames."""
        before = self._framed.get(namespace, {})
        frames: dict[str, tuple[Container, bytes]] = {}
        for id, c in records.items():  # a deleted or replaced record drops out
            hit = before.get(id)
            if hit is None or hit[0] is not c:
                hit = (c, framed(to_pb(c).SerializeToString()))
            frames[id] = hit
        self._framed[namespace] = frames
        return [f for _, f in frames.values()]

    async def _matching(self, request: containers_pb2.ListContainersRequest) -> list[bytes]:
        namespace = context.namespace()
        records = await self._local.records(namespace)
        frames = self._frames(namespace, records)
        if not request.filters:
            return frames
        match = filters.parse_all(list(request.filters))
        pairs = zip(records.values(), frames, strict=True)
        return [f for c, f in pairs if match.match(_adaptor(c))]

    async def Get(
        self, request: containers_pb2.GetContainerRequest, ctx: grpc.aio.ServicerContext
    ) -> containers_pb2.GetContainerResponse:
        container = await self._local.get(context.namespace(), request.id)
        return containers_pb2.GetContainerResponse(container=to_pb(container))

    async def List(
        self, request: containers_pb2.ListContainersRequest, ctx: grpc.aio.ServicerContext
    ) -> bytes:
        # The serialized ListContainersResponse: its `containers` (field 1) are the frames.
        if request.filters:
            return b"".join(await self._matching(request))
        namespace = context.namespace()
        records = await self._local.records(namespace)
        kept = self._answers.get(namespace)
        if kept is None or kept[0] is not records:
            kept = (records, b"".join(self._frames(namespace, records)))
            self._answers[namespace] = kept
        return kept[1]

    async def ListStream(
        self,
        request: containers_pb2.ListContainersRequest,
        ctx: grpc.aio.ServicerContext,
    ) -> AsyncIterator[bytes]:
        # Each serialized ListContainerMessage is its `container` (field 1): one frame.
        for frame in await self._matching(request):
            yield frame

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
