from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
from google.protobuf.empty_pb2 import Empty
from google.protobuf.message import Message

from liner_api.containerd.events import snapshot_pb2 as events_pb2
from liner_api.containerd.services.snapshots.v1 import snapshots_pb2, snapshots_pb2_grpc
from liner_api.containerd.types import mount_pb2
from linerd import context
from linerd.core import filters
from linerd.core.types import Mount, SnapshotInfo, SnapshotKind
from linerd.errdefs import InvalidArgument
from linerd.events import Exchange
from linerd.gc.collector import Collector
from linerd.services.convert import pack, timestamp
from linerd.snapshots.store import SnapshotStore

_KINDS = {
    SnapshotKind.VIEW: snapshots_pb2.VIEW,
    SnapshotKind.ACTIVE: snapshots_pb2.ACTIVE,
    SnapshotKind.COMMITTED: snapshots_pb2.COMMITTED,
}
_LIST_BATCH = 100


def mounts_pb(mounts: list[Mount]) -> list[mount_pb2.Mount]:
    return [mount_pb2.Mount(type=m.type, source=m.source, options=m.options) for m in mounts]


def _info(info: SnapshotInfo) -> snapshots_pb2.Info:
    return snapshots_pb2.Info(
        name=info.name,
        parent=info.parent,
        kind=_KINDS[info.kind],
        labels=info.labels,
        created_at=timestamp(info.created_at),
        updated_at=timestamp(info.updated_at),
    )


class SnapshotsService(snapshots_pb2_grpc.SnapshotsServicer):
    def __init__(
        self, stores: dict[str, SnapshotStore], default: str, gc: Collector, events: Exchange
    ) -> None:
        self._stores = stores
        self._default = default
        self._gc = gc
        self._events = events

    def _store(self, name: str) -> SnapshotStore:
        store = self._stores.get(name or self._default)
        if store is None:
            raise InvalidArgument(
                f"snapshotter {name!r} is not loaded (available: {', '.join(self._stores)})"
            )
        return store

    def _publish(self, topic: str, event: Message) -> None:
        any_ = pack(event)
        self._events.publish(context.namespace(), topic, any_.type_url, any_.value)

    async def Prepare(
        self, request: snapshots_pb2.PrepareSnapshotRequest, ctx: grpc.aio.ServicerContext
    ) -> snapshots_pb2.PrepareSnapshotResponse:
        store = self._store(request.snapshotter)
        mounts = await store.create(
            context.namespace(),
            request.key,
            request.parent,
            dict(request.labels),
            SnapshotKind.ACTIVE,
            context.lease(),
        )
        self._publish(
            "/snapshot/prepare",
            events_pb2.SnapshotPrepare(
                key=request.key, parent=request.parent, snapshotter=store.name
            ),
        )
        return snapshots_pb2.PrepareSnapshotResponse(mounts=mounts_pb(mounts))

    async def View(
        self, request: snapshots_pb2.ViewSnapshotRequest, ctx: grpc.aio.ServicerContext
    ) -> snapshots_pb2.ViewSnapshotResponse:
        store = self._store(request.snapshotter)
        mounts = await store.create(
            context.namespace(),
            request.key,
            request.parent,
            dict(request.labels),
            SnapshotKind.VIEW,
            context.lease(),
        )
        return snapshots_pb2.ViewSnapshotResponse(mounts=mounts_pb(mounts))

    async def Mounts(
        self, request: snapshots_pb2.MountsRequest, ctx: grpc.aio.ServicerContext
    ) -> snapshots_pb2.MountsResponse:
        mounts = await self._store(request.snapshotter).mounts(context.namespace(), request.key)
        return snapshots_pb2.MountsResponse(mounts=mounts_pb(mounts))

    async def Commit(
        self, request: snapshots_pb2.CommitSnapshotRequest, ctx: grpc.aio.ServicerContext
    ) -> Empty:
        store = self._store(request.snapshotter)
        await store.commit(
            context.namespace(), request.name, request.key, dict(request.labels), context.lease()
        )
        self._publish(
            "/snapshot/commit",
            events_pb2.SnapshotCommit(key=request.key, name=request.name, snapshotter=store.name),
        )
        return Empty()

    async def Remove(
        self, request: snapshots_pb2.RemoveSnapshotRequest, ctx: grpc.aio.ServicerContext
    ) -> Empty:
        store = self._store(request.snapshotter)
        await store.remove(context.namespace(), request.key)
        self._publish(
            "/snapshot/remove", events_pb2.SnapshotRemove(key=request.key, snapshotter=store.name)
        )
        self._gc.schedule()
        return Empty()

    async def Stat(
        self, request: snapshots_pb2.StatSnapshotRequest, ctx: grpc.aio.ServicerContext
    ) -> snapshots_pb2.StatSnapshotResponse:
        info = await self._store(request.snapshotter).stat(context.namespace(), request.key)
        return snapshots_pb2.StatSnapshotResponse(info=_info(info))

    async def Update(
        self, request: snapshots_pb2.UpdateSnapshotRequest, ctx: grpc.aio.ServicerContext
    ) -> snapshots_pb2.UpdateSnapshotResponse:
        info = await self._store(request.snapshotter).update(
            context.namespace(),
            request.info.name,
            dict(request.info.labels),
            list(request.update_mask.paths),
        )
        return snapshots_pb2.UpdateSnapshotResponse(info=_info(info))

    async def List(
        self,
        request: snapshots_pb2.ListSnapshotsRequest,
        ctx: grpc.aio.ServicerContext,
    ) -> AsyncIterator[snapshots_pb2.ListSnapshotsResponse]:
        match = filters.parse_all(list(request.filters))
        batch: list[snapshots_pb2.Info] = []
        for info in await self._store(request.snapshotter).list(context.namespace()):
            fields = {"name": info.name, "parent": info.parent, "kind": info.kind.value}
            if match.match(filters.dict_adaptor(fields, info.labels)):
                batch.append(_info(info))
            if len(batch) == _LIST_BATCH:
                yield snapshots_pb2.ListSnapshotsResponse(info=batch)
                batch = []
        if batch:
            yield snapshots_pb2.ListSnapshotsResponse(info=batch)

    async def Usage(
        self, request: snapshots_pb2.UsageRequest, ctx: grpc.aio.ServicerContext
    ) -> snapshots_pb2.UsageResponse:
        usage = await self._store(request.snapshotter).usage(context.namespace(), request.key)
        return snapshots_pb2.UsageResponse(size=usage.size, inodes=usage.inodes)

    async def Cleanup(
        self, request: snapshots_pb2.CleanupRequest, ctx: grpc.aio.ServicerContext
    ) -> Empty:
        await self._store(request.snapshotter).cleanup()
        return Empty()
