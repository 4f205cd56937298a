from __future__ import annotations

import asyncio
from pathlib import Path

import grpc

from liner_api.containerd.services.diff.v1 import diff_pb2, diff_pb2_grpc
from linerd import context
from linerd.content.store import ContentStore
from linerd.core import validate
from linerd.core.types import Mount
from linerd.errdefs import InvalidArgument, NotImplementedYet
from linerd.layers import apply_to_mounts
from linerd.services.convert import descriptor


def mounts_from(pb: list) -> list[Mount]:  # type: ignore[type-arg]
    return [Mount(m.type, m.source, tuple(m.options)) for m in pb]


class DiffService(diff_pb2_grpc.DiffServicer):
    def __init__(self, content: ContentStore, snapshots_root: Path, scratch: Path) -> None:
        self._content = content
        self._trusted = snapshots_root
        self._scratch = scratch

    async def Apply(
        self, request: diff_pb2.ApplyRequest, ctx: grpc.aio.ServicerContext
    ) -> diff_pb2.ApplyResponse:
        if request.payloads:
            raise InvalidArgument("stream processor payloads are not supported")
        layer = request.diff
        digest = validate.digest(layer.digest)
        await self._content.info(context.namespace(), digest)  # NOT_FOUND when not ours
        path = self._content.local.path(digest)
        mounts = mounts_from(list(request.mounts))

        def apply() -> diff_pb2.ApplyResponse:
            with open(path, "rb") as raw:
                applied = apply_to_mounts(
                    raw,
                    layer.media_type,
                    mounts,
                    self._trusted,
                    self._scratch,
                    name=f"layer {digest}",
                )
            return diff_pb2.ApplyResponse(applied=descriptor(applied))

        return await asyncio.to_thread(apply)

    async def Diff(
        self, request: diff_pb2.DiffRequest, ctx: grpc.aio.ServicerContext
    ) -> diff_pb2.DiffResponse:
        raise NotImplementedYet("Diff (compare two mounts) is not implemented yet")
