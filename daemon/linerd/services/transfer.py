"""The liner Transfer API: messages to calls of the local Transfer service and back.

A pull's or push's progress is streamed while it runs; the work itself, and what every
caller gets with it (events, metrics, leases), is the local service's.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable
from typing import TYPE_CHECKING, Protocol, TypeVar

import grpc

from liner_api.liner.services.transfer.v1 import transfer_pb2, transfer_pb2_grpc
from liner_common.platforms import Platform
from linerd import context
from linerd.local.transfer import LocalTransfer
from linerd.services.convert import descriptor, from_descriptor

if TYPE_CHECKING:  # imported where used: pulls, pushes and archives load the registry client
    from linerd.pull import Progress
    from linerd.push import PushProgress

T = TypeVar("T")

# How often a pull's progress is streamed while it changes.
PROGRESS_INTERVAL = 0.1


class _Watched(Protocol):
    changed: asyncio.Event


def _platforms(pb: list) -> list[Platform]:  # type: ignore[type-arg]
    return [Platform(p.os, p.architecture, p.variant) for p in pb]


def _snapshot(progress: Progress | PushProgress) -> list[transfer_pb2.BlobProgress]:
    return [
        transfer_pb2.BlobProgress(
            descriptor=descriptor(b.descriptor), offset=b.offset, state=b.state
        )
        for b in progress.blobs.values()
    ]


async def _watch(work: Awaitable[T], progress: _Watched) -> AsyncIterator[tuple[bool, T | None]]:
    """Run `work`, yielding (False, None) each time `progress` changed (at most every
    PROGRESS_INTERVAL), then (True, its result). Cancels the work if the stream ends early
    (the client went away)."""
    task = asyncio.ensure_future(work)
    try:
        while not task.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), PROGRESS_INTERVAL)
            if progress.changed.is_set():
                progress.changed.clear()
                yield False, None
        yield True, task.result()
    finally:
        task.cancel()


class TransferService(transfer_pb2_grpc.TransferServicer):
    def __init__(self, transfer: LocalTransfer) -> None:
        self._transfer = transfer

    async def Pull(
        self, request: transfer_pb2.PullRequest, ctx: grpc.aio.ServicerContext
    ) -> AsyncIterator[transfer_pb2.PullProgress]:
        from linerd.pull import Progress

        progress = Progress()
        work = self._transfer.pull(
            context.namespace(),
            request.reference,
            platforms=_platforms(list(request.platforms)),
            all_platforms=request.all_platforms,
            snapshotter=request.snapshotter,
            unpack=not request.skip_unpack,
            plain_http=request.plain_http,
            username=request.credentials.username,
            secret=request.credentials.secret,
            progress=progress,
        )
        async with contextlib.aclosing(_watch(work, progress)) as steps:
            async for done, result in steps:
                message = transfer_pb2.PullProgress(blobs=_snapshot(progress))
                if done:
                    assert result is not None
                    message.name, message.done = result.image.name, True
                    message.target.CopyFrom(descriptor(result.image.target))
                yield message

    async def Push(
        self, request: transfer_pb2.PushRequest, ctx: grpc.aio.ServicerContext
    ) -> AsyncIterator[transfer_pb2.PushProgress]:
        from linerd.push import PushProgress

        progress = PushProgress()
        work = self._transfer.push(
            context.namespace(),
            request.reference,
            image=request.image,
            platforms=_platforms(list(request.platforms)),
            plain_http=request.plain_http,
            username=request.credentials.username,
            secret=request.credentials.secret,
            progress=progress,
            target=from_descriptor(request.target) if request.HasField("target") else None,
        )
        async with contextlib.aclosing(_watch(work, progress)) as steps:
            async for done, result in steps:
                message = transfer_pb2.PushProgress(blobs=_snapshot(progress))
                if done:
                    assert result is not None
                    message.name, message.done = result.reference, True
                    message.target.CopyFrom(descriptor(result.target))
                yield message

    async def Export(
        self, request: transfer_pb2.ExportRequest, ctx: grpc.aio.ServicerContext
    ) -> AsyncIterator[transfer_pb2.ExportChunk]:
        chunks = await self._transfer.export(
            context.namespace(),
            list(request.names),
            platforms=_platforms(list(request.platforms)),
            all_platforms=request.all_platforms,
            docker_manifest=request.docker_manifest,
        )
        async with contextlib.aclosing(chunks):
            async for data in chunks:
                yield transfer_pb2.ExportChunk(data=data)

    async def Import(
        self,
        request_iterator: AsyncIterator[transfer_pb2.ImportChunk],
        ctx: grpc.aio.ServicerContext,
    ) -> transfer_pb2.ImportResponse:
        first: transfer_pb2.ImportChunk | None = None
        async for message in request_iterator:
            first = message
            break
        if first is None:
            first = transfer_pb2.ImportChunk()
        options = first.options

        async def chunks() -> AsyncIterator[bytes]:
            assert first is not None
            if first.data:
                yield first.data
            async for message in request_iterator:
                yield message.data

        imported = await self._transfer.import_(
            context.namespace(),
            chunks(),
            snapshotter=options.snapshotter,
            skip_unpack=options.skip_unpack,
            base_name=options.base_name,
            all_platforms=options.all_platforms,
        )
        response = transfer_pb2.ImportResponse()
        for item in imported:
            response.images.add(
                name=item.image.name, target=descriptor(item.image.target), created=item.created
            )
        return response
