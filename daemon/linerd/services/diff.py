from __future__ import annotations

import asyncio
import contextlib
import secrets
import tempfile
from pathlib import Path

import grpc
import structlog

from liner_api.containerd.services.diff.v1 import diff_pb2, diff_pb2_grpc
from linerd import context
from linerd.content.store import ContentStore
from linerd.core import validate
from linerd.core.types import Descriptor, Mount
from linerd.errdefs import AlreadyExists, InvalidArgument
from linerd.services.convert import descriptor

log = structlog.get_logger("linerd.diff")

DEFAULT_DIFF_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
UNCOMPRESSED_LABEL = "containerd.io/uncompressed"


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
        # The decompressors load on first use.
        from linerd.layers import WORKER_MIN_SIZE, apply_to_mounts

        if request.payloads:
            raise InvalidArgument("stream processor payloads are not supported")
        layer = request.diff
        digest = validate.digest(layer.digest)
        info = await self._content.info(context.namespace(), digest)  # NOT_FOUND when not ours
        path = self._content.local.path(digest)
        mounts = mounts_from(list(request.mounts))
        applied = await self._apply_prestaged(layer.media_type, digest, mounts)
        if applied is not None:
            return diff_pb2.ApplyResponse(applied=descriptor(applied))
        area = self._content.prestager
        staging = None
        if area is not None and info.size >= WORKER_MIN_SIZE:
            staging = await asyncio.to_thread(area.new_dir)

        def apply() -> diff_pb2.ApplyResponse:
            with open(path, "rb") as raw:
                applied = apply_to_mounts(
                    raw,
                    layer.media_type,
                    mounts,
                    self._trusted,
                    self._scratch,
                    name=f"layer {digest}",
                    size=info.size,
                    staging=staging,
                )
            return diff_pb2.ApplyResponse(applied=descriptor(applied))

        try:
            return await asyncio.to_thread(apply)
        finally:
            if staging is not None:
                await asyncio.to_thread(area.remove_dir, staging)  # type: ignore[union-attr]

    async def _apply_prestaged(
        self, media_type: str, digest: str, mounts: list[Mount]
    ) -> Descriptor | None:
        """Finish the layer staged while the client wrote it (linerd.prestage), if any;
        None, with nothing done, where it cannot go (a media type Apply refuses, mounts not
        ours or on another filesystem)."""
        from linerd.diff.compression import SUPPORTED_MEDIA_TYPES
        from linerd.layers import apply_staged_to, staged_target

        prestager = self._content.prestager
        prestaged = await prestager.take(digest) if prestager is not None else None
        if prestaged is None:
            return None

        def move() -> bool:
            if media_type not in SUPPORTED_MEDIA_TYPES:
                return False
            target = staged_target(mounts, self._trusted, prestaged.directory)
            if target is None:
                return False
            apply_staged_to(prestaged.staged, prestaged.directory, target)
            return True

        try:
            done = await asyncio.to_thread(move)
            if done:
                log.debug("layer applied from its prestage", digest=digest)
        finally:
            await asyncio.to_thread(prestager.drop, prestaged)  # type: ignore[union-attr]
        return prestaged.staged.applied if done else None

    async def Diff(
        self, request: diff_pb2.DiffRequest, ctx: grpc.aio.ServicerContext
    ) -> diff_pb2.DiffResponse:
        """Write the changes from `left` to `right` as a layer into the content store."""
        from linerd.layers import write_layer

        namespace = context.namespace()
        media_type = request.media_type or DEFAULT_DIFF_MEDIA_TYPE
        left, right = mounts_from(list(request.left)), mounts_from(list(request.right))
        self._scratch.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=self._scratch) as out:
            desc, diff_id = await asyncio.to_thread(
                write_layer, left, right, media_type, self._scratch, out
            )
            labels = {**request.labels, UNCOMPRESSED_LABEL: diff_id}
            ref = request.ref or f"diff-{secrets.token_hex(8)}"
            try:
                writer = await self._content.writer(
                    namespace, ref, desc.size, desc.digest, context.lease()
                )
            except AlreadyExists:
                return diff_pb2.DiffResponse(diff=descriptor(desc))
            try:
                out.seek(0)
                offset = 0
                while chunk := await asyncio.to_thread(out.read, 1 << 20):
                    await writer.write(offset, chunk, desc.size)
                    offset += len(chunk)
                with contextlib.suppress(AlreadyExists):
                    await writer.commit(desc.size, desc.digest, labels)
            finally:
                writer.close()
        return diff_pb2.DiffResponse(diff=descriptor(desc))
