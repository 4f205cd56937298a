from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
from google.protobuf.empty_pb2 import Empty

from liner_api.containerd.events import content_pb2 as events_pb2
from liner_api.containerd.services.content.v1 import content_pb2, content_pb2_grpc
from linerd import context
from linerd.content.store import ContentStore, Writer
from linerd.core import filters
from linerd.core.types import ContentInfo, IngestStatus
from linerd.errdefs import FailedPrecondition, InvalidArgument, NotFound, OutOfRange
from linerd.events import Exchange
from linerd.gc.collector import Collector
from linerd.services.convert import pack, timestamp

STAT = content_pb2.WriteAction.Value("STAT")
WRITE = content_pb2.WriteAction.Value("WRITE")
COMMIT = content_pb2.WriteAction.Value("COMMIT")
_LIST_BATCH = 100
# Small blobs (manifests, indexes, configs) that clients read again and again are kept in
# memory: a blob's bytes never change, so only the namespace's record is checked per read.
SMALL_BLOB = 256 << 10
SMALL_BLOBS_TOTAL = 4 << 20


class SmallBlobs:
    """Bytes of small blobs by digest, at most `total` bytes (oldest dropped first)."""

    def __init__(self, total: int = SMALL_BLOBS_TOTAL) -> None:
        self._total = total
        self._size = 0
        self._items: dict[str, bytes] = {}

    def get(self, digest: str) -> bytes | None:
        return self._items.get(digest)

    def put(self, digest: str, data: bytes) -> None:
        if digest in self._items or len(data) > self._total:
            return
        while self._items and self._size + len(data) > self._total:
            self._size -= len(self._items.pop(next(iter(self._items))))
        self._items[digest] = data
        self._size += len(data)


def _info(info: ContentInfo) -> content_pb2.Info:
    return content_pb2.Info(
        digest=info.digest,
        size=info.size,
        created_at=timestamp(info.created_at),
        updated_at=timestamp(info.updated_at),
        labels=info.labels,
    )


def _status(status: IngestStatus) -> content_pb2.Status:
    return content_pb2.Status(
        ref=status.ref,
        offset=status.offset,
        total=status.total,
        expected=status.expected,
        started_at=timestamp(status.started_at),
        updated_at=timestamp(status.updated_at),
    )


class ContentService(content_pb2_grpc.ContentServicer):
    def __init__(self, store: ContentStore, gc: Collector, events: Exchange) -> None:
        self._store = store
        self._gc = gc
        self._events = events
        self._small = SmallBlobs()

    async def Info(
        self, request: content_pb2.InfoRequest, ctx: grpc.aio.ServicerContext
    ) -> content_pb2.InfoResponse:
        info = await self._store.info(context.namespace(), request.digest)
        return content_pb2.InfoResponse(info=_info(info))

    async def Update(
        self, request: content_pb2.UpdateRequest, ctx: grpc.aio.ServicerContext
    ) -> content_pb2.UpdateResponse:
        info = await self._store.update(
            context.namespace(),
            request.info.digest,
            dict(request.info.labels),
            list(request.update_mask.paths),
        )
        return content_pb2.UpdateResponse(info=_info(info))

    async def List(
        self, request: content_pb2.ListContentRequest, ctx: grpc.aio.ServicerContext
    ) -> AsyncIterator[content_pb2.ListContentResponse]:
        match = filters.parse_all(list(request.filters))
        batch: list[content_pb2.Info] = []
        for info in await self._store.list(context.namespace()):
            fields = {"digest": info.digest, "size": str(info.size)}
            if match.match(filters.dict_adaptor(fields, info.labels)):
                batch.append(_info(info))
            if len(batch) == _LIST_BATCH:
                yield content_pb2.ListContentResponse(info=batch)
                batch = []
        if batch:
            yield content_pb2.ListContentResponse(info=batch)

    async def Delete(
        self, request: content_pb2.DeleteContentRequest, ctx: grpc.aio.ServicerContext
    ) -> Empty:
        namespace = context.namespace()
        await self._store.delete(namespace, request.digest)
        event = pack(events_pb2.ContentDelete(digest=request.digest))
        self._events.publish(namespace, "/content/delete", event.type_url, event.value)
        self._gc.schedule()
        return Empty()

    async def _small_blob(self, namespace: str, digest: str) -> bytes | None:
        """The whole blob if it is small (NotFound without this namespace's record)."""
        info = await self._store.info(namespace, digest)
        if info.size > SMALL_BLOB:
            return None
        data = self._small.get(info.digest)
        if data is None:
            try:
                data = await asyncio.to_thread(self._store.local.read, info.digest, 0, info.size)
            except FileNotFoundError as e:
                raise NotFound(f"content digest {digest} not found") from e
            if len(data) != info.size:
                raise FailedPrecondition(f"blob {digest} is shorter than its record")
            self._small.put(info.digest, data)
        return data

    async def Read(
        self, request: content_pb2.ReadContentRequest, ctx: grpc.aio.ServicerContext
    ) -> AsyncIterator[content_pb2.ReadContentResponse]:
        namespace, offset = context.namespace(), request.offset
        data = await self._small_blob(namespace, request.digest)
        if data is not None:
            # The same answers as the store's chunked read, without a file read per call.
            if offset < 0 or offset > len(data):
                raise OutOfRange(
                    f"offset {offset} is outside blob {request.digest} of {len(data)} bytes"
                )
            end = len(data) if request.size <= 0 else min(len(data), offset + request.size)
            if offset < end:
                yield content_pb2.ReadContentResponse(offset=offset, data=data[offset:end])
            return
        chunks = await self._store.read(namespace, request.digest, offset, request.size)
        async for data in chunks:
            yield content_pb2.ReadContentResponse(offset=offset, data=data)
            offset += len(data)

    async def Status(
        self, request: content_pb2.StatusRequest, ctx: grpc.aio.ServicerContext
    ) -> content_pb2.StatusResponse:
        status = await self._store.status(context.namespace(), request.ref)
        return content_pb2.StatusResponse(status=_status(status))

    async def ListStatuses(
        self, request: content_pb2.ListStatusesRequest, ctx: grpc.aio.ServicerContext
    ) -> content_pb2.ListStatusesResponse:
        match = filters.parse_all(list(request.filters))
        statuses = [
            _status(s)
            for s in await self._store.list_statuses(context.namespace())
            if match.match(filters.dict_adaptor({"ref": s.ref, "expected": s.expected}))
        ]
        return content_pb2.ListStatusesResponse(statuses=statuses)

    async def Abort(
        self, request: content_pb2.AbortRequest, ctx: grpc.aio.ServicerContext
    ) -> Empty:
        await self._store.abort(context.namespace(), request.ref)
        return Empty()

    async def Write(
        self,
        requests: AsyncIterator[content_pb2.WriteContentRequest],
        ctx: grpc.aio.ServicerContext,
    ) -> AsyncIterator[content_pb2.WriteContentResponse]:
        """STAT/WRITE/COMMIT in lockstep, one response per request (see the API reference)."""
        namespace = context.namespace()
        writer: Writer | None = None
        total = 0
        expected = ""
        try:
            async for request in requests:
                if writer is None:
                    if not request.ref:
                        raise InvalidArgument("first message must have a reference")
                    writer = await self._store.writer(
                        namespace,
                        request.ref,
                        request.total,
                        request.expected,
                        context.lease(),
                        prestage=True,
                    )
                if request.total > 0:
                    total = request.total
                if request.expected:
                    expected = request.expected
                if request.action not in (STAT, WRITE, COMMIT):
                    raise InvalidArgument(f"unknown write action {request.action}")
                if request.action != STAT:
                    await writer.write(request.offset, request.data, total)
                if request.action == COMMIT:
                    await writer.commit(total, expected, dict(request.labels))
                    yield content_pb2.WriteContentResponse(
                        action=COMMIT,
                        offset=writer.ingest.offset,
                        total=total or writer.ingest.offset,
                        digest=writer.digest,
                    )
                    return
                status = writer.status()
                yield content_pb2.WriteContentResponse(
                    action=request.action,
                    offset=status.offset,
                    total=status.total,
                    digest=writer.digest,
                    started_at=timestamp(status.started_at),
                    updated_at=timestamp(status.updated_at),
                )
        finally:
            if writer is not None:
                writer.close()
