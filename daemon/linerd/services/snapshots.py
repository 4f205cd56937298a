from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
from google.protobuf.empty_pb2 import Empty

from liner_api.containerd.services.snapshots.v1 import snapshots_pb2, snapshots_pb2_grpc
from liner_api.containerd.types import mount_pb2
from linerd import context
from linerd.core import filters
from linerd.core.types import Mount, SnapshotInfo, SnapshotKind
from linerd.local.snapshots import Snapshots
from linerd.services.convert import timestamp

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
    def __init__(self, local: Snapshots) -> None:
        self._local = local

    async def Prepare(
        self, request: snapshots_pb2.PrepareSnapshotRequest, ctx: grpc.aio.ServicerContext
    ) -> snapshots_pb2.PrepareSnapshotResponse:
        mounts = await self._local.prepare(
            context.namespace(),
            request.snapshotter,
            request.key,
            request.parent,
            dict(request.labels),
            context.lease(),
        )
        return snapshots_pb2.PrepareSnapshotResponse(mounts=mounts_pb(mounts))

    async def View(
        self, request: snapshots_pb2.ViewSnapshotRequest, ctx: grpc.aio.ServicerContext
    ) -> snapshots_pb2.ViewSnapshotResponse:
        mounts = await self._local.view(
            context.namespace(),
            request.snapshotter,
            request.key,
            request.parent,
            dict(request.labels),
            context.lease(),
        )
        return snapshots_pb2.ViewSnapshotResponse(mounts=mounts_pb(mounts))

    async def Mounts(
        self, request: snapshots_pb2.MountsRequest, ctx: grpc.aio.ServicerContext
    ) -> snapshots_pb2.MountsResponse:
        mounts = await self._local.mounts(context.namespace(), request.snapshotter, request.key)
        return snapshots_pb2.MountsResponse(mounts=mounts_pb(mounts))

    async def Commit(
        self, request: snapshots_pb2.CommitSnapshotRequest, ctx: grpc.aio.ServicerContext
    ) -> Empty:
        await self._local.commit(
            context.namespace(),
            request.snapshotter,
            request.name,
            request.key,
            dict(request.labels),
            context.lease(),
        )
        return Empty()

    async def Remove(
        self, request: snapshots_pb2.RemoveSnapshotRequest, ctx: grpc.aio.ServicerContext
    ) -> Empty:
        await self._local.remove(context.namespace(), request.snapshotter, request.key)
        return Empty()

    async def Stat(
        self, request: snapshots_pb2.StatSnapshotRequest, ctx: grpc.aio.ServicerContext
    ) -> snapshots_pb2.StatSnapshotResponse:
        info = await self._local.stat(context.namespace(), request.snapshotter, request.key)
        return snapshots_pb2.StatSnapshotResponse(info=_info(info))

    async def Update(
        self, request: snapshots_pb2.UpdateSnapshotRequest, ctx: grpc.aio.ServicerContext
    ) -> snapshots_pb2.UpdateSnapshotResponse:
        info = await self._local.update(
            context.namespace(),
            request.snapshotter,
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
        for info in await self._local.list(context.namespace(), request.snapshotter):
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
        usage = await self._local.usage(context.namespace(), request.snapshotter, request.key)
        return snapshots_pb2.UsageResponse(size=usage.size, inodes=usage.inodes)

    async def Cleanup(
        self, request: snapshots_pb2.CleanupRequest, ctx: grpc.aio.ServicerContext
    ) -> Empty:
        await self._local.cleanup(request.snapshotter)
        return Empty()
