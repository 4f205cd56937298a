from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import grpc

from liner_api.containerd.events import image_pb2 as image_events
from liner_api.liner.services.transfer.v1 import transfer_pb2, transfer_pb2_grpc
from linerd import context
from linerd.events import Exchange
from linerd.imagespec import Platform
from linerd.metrics import Metrics
from linerd.pull import Progress, Puller, PullRequest
from linerd.push import Pusher, PushProgress, PushRequest
from linerd.services.convert import descriptor, pack

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
        self, puller: Puller, events: Exchange, metrics: Metrics, pusher: Pusher | None = None
    ) -> None:
        self._puller = puller
        self._pusher = pusher
        self._events = events
        self._metrics = metrics

    async def Pull(
        self, request: transfer_pb2.PullRequest, ctx: grpc.aio.ServicerContext
    ) -> AsyncIterator[transfer_pb2.PullProgress]:
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
        if self._pusher is None:
            await ctx.abort(grpc.StatusCode.UNIMPLEMENTED, "push is not enabled")
        assert self._pusher is not None
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
