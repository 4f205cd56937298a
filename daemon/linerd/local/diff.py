"""The local Diff service: applying a layer onto mounts, and writing mounts' changes as a layer.

Apply goes through the one unpacker (`linerd.unpack`), which finishes a layer the prestager
staged while a client wrote it. The unpacker, and with it the decompressors, load on the
first call.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from linerd.content.store import ContentStore
from linerd.core import validate
from linerd.core.types import Descriptor, Mount
from linerd.errdefs import AlreadyExists
from linerd.gc.labels import UNCOMPRESSED

if TYPE_CHECKING:
    from linerd.unpack import Unpacker

DEFAULT_DIFF_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
_COPY_CHUNK = 1 << 20


class LocalDiff:
    def __init__(
        self, content: ContentStore, unpacker: Callable[[], Unpacker], scratch: Path
    ) -> None:
        self._content = content
        self._unpacker = unpacker  # built on first use
        self._scratch = scratch

    async def apply(
        self, namespace: str, media_type: str, digest: str, mounts: Sequence[Mount]
    ) -> Descriptor:
        """Unpack the blob `digest` (this namespace's) onto `mounts`; returns the uncompressed
        layer's descriptor (its digest the diff ID)."""
        validate.digest(digest)
        return await self._unpacker().apply(
            namespace, Descriptor(media_type, digest, 0), list(mounts)
        )

    async def diff(
        self,
        namespace: str,
        lease: str | None,
        left: Sequence[Mount],
        right: Sequence[Mount],
        *,
        media_type: str = "",
        ref: str = "",
        labels: Mapping[str, str] | None = None,
    ) -> Descriptor:
        """Write the changes from `left` to `right` as a layer into the content store (under
        `lease`); returns its descriptor. A layer already there is not written again."""
        from linerd.layers import write_layer  # the decompressors load on first use

        media_type = media_type or DEFAULT_DIFF_MEDIA_TYPE
        self._scratch.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=self._scratch) as out:
            desc, diff_id = await asyncio.to_thread(
                write_layer, list(left), list(right), media_type, self._scratch, out
            )
            try:
                writer = await self._content.writer(
                    namespace, ref or f"diff-{secrets.token_hex(8)}", desc.size, desc.digest, lease
                )
            except AlreadyExists:
                return desc
            try:
                out.seek(0)
                offset = 0
                while chunk := await asyncio.to_thread(out.read, _COPY_CHUNK):
                    await writer.write(offset, chunk, desc.size)
                    offset += len(chunk)
                with contextlib.suppress(AlreadyExists):
                    await writer.commit(
                        desc.size, desc.digest, {**(labels or {}), UNCOMPRESSED: diff_id}
                    )
            finally:
                writer.close()
        return desc
