"""The containerd Diff API: messages to calls of the local Diff service and back."""

from __future__ import annotations

import grpc

from liner_api.containerd.services.diff.v1 import diff_pb2, diff_pb2_grpc
from linerd import context
from linerd.core.types import Mount
from linerd.errdefs import InvalidArgument
from linerd.local.diff import LocalDiff
from linerd.services.convert import descriptor


def mounts_from(pb: list) -> list[Mount]:  # type: ignore[type-arg]
    return [Mount(m.type, m.source, tuple(m.options)) for m in pb]


class DiffService(diff_pb2_grpc.DiffServicer):
    def __init__(self, diff: LocalDiff) -> None:
        self._diff = diff

    async def Apply(
        self, request: diff_pb2.ApplyRequest, ctx: grpc.aio.ServicerContext
    ) -> diff_pb2.ApplyResponse:
        if request.payloads:
            raise InvalidArgument("stream processor payloads are not supported")
        applied = await self._diff.apply(
            context.namespace(),
            request.diff.media_type,
            request.diff.digest,
            mounts_from(list(request.mounts)),
        )
        return diff_pb2.ApplyResponse(applied=descriptor(applied))

    async def Diff(
        self, request: diff_pb2.DiffRequest, ctx: grpc.aio.ServicerContext
    ) -> diff_pb2.DiffResponse:
        desc = await self._diff.diff(
            context.namespace(),
            context.lease(),
            mounts_from(list(request.left)),
            mounts_from(list(request.right)),
            media_type=request.media_type,
            ref=request.ref,
            labels=dict(request.labels),
        )
        return diff_pb2.DiffResponse(diff=descriptor(desc))
