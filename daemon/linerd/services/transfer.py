from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc

from liner_api.containerd.events import image_pb2 as image_events
from liner_api.liner.services.transfer.v1 import transfer_pb2, transfer_pb2_grpc
from linerd import context
from linerd.events import Exchange
from linerd.imagespec import Platform
from linerd.services.convert import descriptor, pack

if TYPE_CHECKING:  # imported where used: pulls, pushes and archives load the registry client
    from linerd.archive import Archives
    from linerd.metrics import Metrics
    from linerd.pull import Progress, Puller
    from linerd.push import Pusher, PushProgress

# How often a pull's progress is streamed while it changes.
PROGRESS_INTERVAL = 0.1


def _snapshot(progress: Progress) -> transfer_pb2.PullProgress:
    return transfer_pb2.PullProgress(
        blobs=[
            transfer_pb2.BlobProgress(
                descriptor=descriptor(b.descriptor), offset=b.offset, state=b.state
            )
            for b in progress.blobs.values()
        ]
    )


def _push_snapshot(progress: PushProgress) -> transfer_pb2.PushProgress:
    return transfer_pb2.PushProgress(
        blobs=[
            transfer_pb2.BlobProgress(
                descriptor=descriptor(b.descriptor), offset=b.offset, state=b.state
            )
            for b in progress.blobs.values()
        ]
    )


class TransferService(transfer_pb2_grpc.TransferServicer):
    def __init__(
        self,
        puller: Puller,
        events: Exchange,
        metrics: Metrics,
        pusher: Pusher,
        archives: Archives,
    ) -> None:
        self._puller = puller
        self._pusher = pusher
        self._events = events
        self._metrics = metrics
        self._archives = archives

    async def Pull(
        self, request: transfer_pb2.PullRequest, ctx: grpc.aio.ServicerContext
    ) -> AsyncIterator[transfer_pb2.PullProgress]:
        from linerd.pull import Progress, PullRequest

        namespace = context.namespace()
        pull = PullRequest(
            reference=request.reference,
            platforms=[
                Platform(p.os, p.architecture, p.variant).normalized() for p in request.platforms
            ],
            all_platforms=request.all_platforms,
            snapshotter=request.snapshotter,
            unpack=not request.skip_unpack,
            plain_http=request.plain_http,
            username=request.credentials.username,
            secret=request.credentials.secret,
        )
        progress = Progress()
        started = time.monotonic()
        task = asyncio.create_task(self._puller.pull(namespace, pull, progress))
        try:
            while not task.done():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(task), PROGRESS_INTERVAL)
                if progress.changed.is_set():
                    progress.changed.clear()
                    yield _snapshot(progress)
            image, created = task.result()
        except BaseException:
            self._metrics.observe_pull(False, 0, time.monotonic() - started)
            raise
        finally:
            task.cancel()  # the client went away: stop pulling
        self._metrics.observe_pull(True, progress.fetched, time.monotonic() - started)
        event = (
            image_events.ImageCreate(name=image.name, labels=image.labels)
            if created
            else image_events.ImageUpdate(name=image.name, labels=image.labels)
        )
        any_ = pack(event)
        self._events.publish(
            namespace, "/images/create" if created else "/images/update", any_.type_url, any_.value
        )
        final = _snapshot(progress)
        final.name, final.done = image.name, True
        final.target.CopyFrom(descriptor(image.target))
        yield final

    async def Push(
        self, request: transfer_pb2.PushRequest, ctx: grpc.aio.ServicerContext
    ) -> AsyncIterator[transfer_pb2.PushProgress]:
        from linerd.push import PushProgress, PushRequest

        namespace = context.namespace()
        push = PushRequest(
            reference=request.reference,
            image=request.image,
            platforms=[
                Platform(p.os, p.architecture, p.variant).normalized() for p in request.platforms
            ],
            plain_http=request.plain_http,
            username=request.credentials.username,
            secret=request.credentials.secret,
        )
        progress = PushProgress()
        task = asyncio.create_task(self._pusher.push(namespace, push, progress))
        try:
            while not task.done():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(task), PROGRESS_INTERVAL)
                if progress.changed.is_set():
                    progress.changed.clear()
                    yield _push_snapshot(progress)
            name, target = task.result()
        finally:
            task.cancel()  # the client went away: stop pushing
        final = _push_snapshot(progress)
        final.name, final.done = name, True
        final.target.CopyFrom(descriptor(target))
        yield final

    async def Export(
        self, request: transfer_pb2.ExportRequest, ctx: grpc.aio.ServicerContext
    ) -> AsyncIterator[transfer_pb2.ExportChunk]:
        from linerd.archive import ExportRequest

        namespace = context.namespace()
        export = ExportRequest(
            names=list(request.names),
            platforms=[
                Platform(p.os, p.architecture, p.variant).normalized() for p in request.platforms
            ],
            all_platforms=request.all_platforms,
            docker_manifest=request.docker_manifest,
        )
        chunks = await self._archives.export(namespace, export)
        async with contextlib.aclosing(chunks):
            async for data in chunks:
                yield transfer_pb2.ExportChunk(data=data)

    async def Import(
        self,
        request_iterator: AsyncIterator[transfer_pb2.ImportChunk],
        ctx: grpc.aio.ServicerContext,
    ) -> transfer_pb2.ImportResponse:
        from linerd.archive import ImportOptions

        namespace = context.namespace()
        first: transfer_pb2.ImportChunk | None = None
        async for message in request_iterator:
            first = message
            break
        if first is None:
            first = transfer_pb2.ImportChunk()
        o = first.options
        options = ImportOptions(
            snapshotter=o.snapshotter,
            skip_unpack=o.skip_unpack,
            base_name=o.base_name,
            all_platforms=o.all_platforms,
        )

        async def chunks() -> AsyncIterator[bytes]:
            assert first is not None
            if first.data:
                yield first.data
            async for message in request_iterator:
                yield message.data

        imported = await self._archives.import_(namespace, options, chunks())
        response = transfer_pb2.ImportResponse()
        for image, created in imported:
            event = (
                image_events.ImageCreate(name=image.name, labels=image.labels)
                if created
                else image_events.ImageUpdate(name=image.name, labels=image.labels)
            )
            any_ = pack(event)
            self._events.publish(
                namespace,
                "/images/create" if created else "/images/update",
                any_.type_url,
                any_.value,
            )
            response.images.add(name=image.name, target=descriptor(image.target), created=created)
        return response
