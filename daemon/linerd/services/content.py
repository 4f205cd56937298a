from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
from google.protobuf.empty_pb2 import Empty
from google.protobuf.timestamp_pb2 import Timestamp

from liner_api.containerd.services.content.v1 import content_pb2, content_pb2_grpc
from linerd import context
from linerd.content.store import Writer
from linerd.core import filters
from linerd.core.types import ContentInfo, IngestStatus
from linerd.errdefs import InvalidArgument
from linerd.local.content import Content
from linerd.services.convert import timestamp

STAT = content_pb2.WriteAction.Value("STAT")
WRITE = content_pb2.WriteAction.Value("WRITE")
COMMIT = content_pb2.WriteAction.Value("COMMIT")
_LIST_BATCH = 100


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
    def __init__(self, local: Content) -> None:
        self._local = local

    async def Info(
        self, request: content_pb2.InfoRequest, ctx: grpc.aio.ServicerContext
    ) -> content_pb2.InfoResponse:
        info = await self._local.info(context.namespace(), request.digest)
        return content_pb2.InfoResponse(info=_info(info))

    async def Update(
        self, request: content_pb2.UpdateRequest, ctx: grpc.aio.ServicerContext
    ) -> content_pb2.UpdateResponse:
        info = await self._local.update(
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
        for info in await self._local.list(context.namespace()):
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
        await self._local.delete(context.namespace(), request.digest)
        return Empty()

    async def Read(
        self, request: content_pb2.ReadContentRequest, ctx: grpc.aio.ServicerContext
    ) -> AsyncIterator[content_pb2.ReadContentResponse]:
        offset = request.offset
        chunks = await self._local.read(context.namespace(), request.digest, offset, request.size)
        async for data in chunks:
            yield content_pb2.ReadContentResponse(offset=offset, data=data)
            offset += len(data)

    async def Status(
        self, request: content_pb2.StatusRequest, ctx: grpc.aio.ServicerContext
    ) -> content_pb2.StatusResponse:
        status = await self._local.status(context.namespace(), request.ref)
        return content_pb2.StatusResponse(status=_status(status))

    async def ListStatuses(
        self, request: content_pb2.ListStatusesRequest, ctx: grpc.aio.ServicerContext
    ) -> content_pb2.ListStatusesResponse:
        match = filters.parse_all(list(request.filters))
        statuses = [
            _status(s)
            for s in await self._local.list_statuses(context.namespace())
            if match.match(filters.dict_adaptor({"ref": s.ref, "expected": s.expected}))
        ]
        return content_pb2.ListStatusesResponse(statuses=statuses)

    async def Abort(
        self, request: content_pb2.AbortRequest, ctx: grpc.aio.ServicerContext
    ) -> Empty:
        await self._local.abort(context.namespace(), request.ref)
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
        started_at: Timestamp | None = None
        try:
            async for request in requests:
                if writer is None:
                    if not request.ref:
                        raise InvalidArgument("first message must have a reference")
                    writer = await self._local.writer(
                        namespace, request.ref, request.total, request.expected, context.lease()
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
                # Built from the open ingest, once per MiB that ctr sends: no stat, no datetime.
                ingest = writer.ingest
                if started_at is None:
                    started_at = timestamp(ingest.started_at)
                seconds, nanos = divmod(ingest.updated_ns, 1_000_000_000)
                yield content_pb2.WriteContentResponse(
                    action=request.action,
                    offset=ingest.offset,
                    total=ingest.total,
                    digest=ingest.digest,
                    started_at=started_at,
                    updated_at=Timestamp(seconds=seconds, nanos=nanos),
                )
        finally:
            if writer is not None:
                writer.close()
