"""Content: reads (small blobs served from memory), writes through resumable ingests, and
deletion (containerd's event, then GC: the blob file goes once no namespace records it)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from liner_api.containerd.events import content_pb2 as events
from linerd.errdefs import FailedPrecondition, NotFound, OutOfRange

if TYPE_CHECKING:
    from linerd.content.store import ContentStore, Writer
    from linerd.core.types import ContentInfo, IngestStatus
    from linerd.gc.collector import Collector
    from linerd.local.events import Publisher

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


async def _one(chunk: bytes) -> AsyncIterator[bytes]:
    if chunk:
        yield chunk


class Content:
    def __init__(self, store: ContentStore, gc: Collector, publisher: Publisher) -> None:
        self.store = store
        self._gc = gc
        self._publisher = publisher
        self._small = SmallBlobs()

    async def info(self, namespace: str, digest: str) -> ContentInfo:
        return await self.store.info(namespace, digest)

    async def update(
        self, namespace: str, digest: str, labels: dict[str, str], paths: list[str]
    ) -> ContentInfo:
        return await self.store.update(namespace, digest, labels, paths)

    async def list(self, namespace: str) -> list[ContentInfo]:
        return await self.store.list(namespace)

    async def delete(self, namespace: str, digest: str) -> None:
        await self.store.delete(namespace, digest)
        self._publisher.publish(namespace, "/content/delete", events.ContentDelete(digest=digest))
        self._gc.schedule()

    async def read(
        self, namespace: str, digest: str, offset: int = 0, size: int = 0
    ) -> AsyncIterator[bytes]:
        """Chunks of the blob from `offset`; `size` <= 0 or past the end reads to the end.
        NotFound and OutOfRange are raised here, before the first chunk."""
        data = await self._small_blob(namespace, digest)
        if data is None:
            return await self.store.read(namespace, digest, offset, size)
        # The same answers as the store's chunked read, without a file read per call.
        if offset < 0 or offset > len(data):
            raise OutOfRange(f"offset {offset} is outside blob {digest} of {len(data)} bytes")
        end = len(data) if size <= 0 else min(len(data), offset + size)
        return _one(data[offset:end])

    async def _small_blob(self, namespace: str, digest: str) -> bytes | None:
        """The whole blob if it is small (NotFound without this namespace's record)."""
        info = await self.store.info(namespace, digest)
        if info.size > SMALL_BLOB:
            return None
        data = self._small.get(info.digest)
        if data is None:
            try:
                data = await asyncio.to_thread(self.store.local.read, info.digest, 0, info.size)
            except FileNotFoundError as e:
                raise NotFound(f"content digest {digest} not found") from e
            if len(data) != info.size:
                raise FailedPrecondition(f"blob {digest} is shorter than its record")
            self._small.put(info.digest, data)
        return data

    async def writer(
        self, namespace: str, ref: str, total: int, expected: str, lease: str | None
    ) -> Writer:
        """Open (or resume) the ingest `ref` for a client's writes (a layer written this way
        may be staged for unpacking meanwhile). The caller closes the writer."""
        return await self.store.writer(namespace, ref, total, expected, lease, prestage=True)

    async def status(self, namespace: str, ref: str) -> IngestStatus:
        return await self.store.status(namespace, ref)

    async def list_statuses(self, namespace: str) -> list[IngestStatus]:
        return await self.store.list_statuses(namespace)

    async def abort(self, namespace: str, ref: str) -> None:
        await self.store.abort(namespace, ref)
