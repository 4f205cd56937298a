"""The namespaced content store: blob files from `LocalStore`, records from `ContentRecords`.

Blobs are shared by namespaces (containerd's "shared" policy): a namespace sees a blob only
once it has a record for it, made by a committed write. Deleting a record leaves the file to
the garbage collector, which removes files no namespace records.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from linerd import faults
from linerd.content.live import LiveBlob
from linerd.content.local import Ingest, LocalStore
from linerd.core import validate
from linerd.core.types import ContentInfo, IngestStatus
from linerd.errdefs import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    NotFound,
    OutOfRange,
    Unavailable,
)
from linerd.metadata.content import ContentRecords

if TYPE_CHECKING:
    from linerd.prestage import Prestager

READ_CHUNK = 1 << 20
# Labels made of a record's current ones (run on the database thread: quick and pure).
Labeller = Callable[[dict[str, str]], dict[str, str]]


@dataclass(slots=True)
class Writer:
    """One client's hold on an ingest, from the first STAT until the stream ends."""

    store: ContentStore
    namespace: str
    lease: str | None
    ingest: Ingest
    committed: bool = field(default=False)
    live: LiveBlob | None = None  # a prestage reading the bytes as they come

    def status(self) -> IngestStatus:
        return self.ingest.status()

    @property
    def digest(self) -> str:
        return self.ingest.digest

    async def write(self, offset: int, data: bytes, total: int = 0) -> None:
        if offset == 0 and self.ingest.offset > 0 and self.live is not None:
            # Starting over rewrites what a prestage may have read already: it is dropped.
            self.live.finish(Aborted("the write started over"))
            self.live = None
        if total:
            self.ingest.set_total(total)
        # One hop per message (ctr waits for each answer): no context copy, as to_thread makes.
        await asyncio.get_running_loop().run_in_executor(
            None, self.ingest.write, offset, data, total
        )
        if self.live is not None:
            self.live.grew(self.ingest.offset)
        faults.point("content-write")

    async def commit(self, size: int, expected: str, labels: dict[str, str]) -> ContentInfo:
        if expected:
            validate.digest(expected)
        labels = validate.labels(labels)
        store = self.store
        async with store.gc_lock:
            try:
                digest = await asyncio.to_thread(
                    self.ingest.commit,
                    store.local.path(expected or self.digest),
                    size or self.ingest.total,
                    expected,
                )
            except AlreadyExists:
                # Bytes already in the store: make sure this namespace records them too.
                self.committed = True
                await store.adopt_locked(
                    self.namespace, expected or self.digest, labels, self.lease
                )
                raise
            self.committed = True
            faults.point("content-commit")
            info = await store.records.add(
                self.namespace, digest, self.ingest.offset, labels, self.lease
            )
        if info is None:
            raise AlreadyExists(f"content {digest} already exists")
        if self.live is not None:
            self.live.finish(digest=digest)
        return info

    def close(self) -> None:
        if self.live is not None:
            self.live.finish(Aborted("the write ended before its commit"))
        self.ingest.close()
        self.store._locked.discard((self.namespace, self.ingest.ref))


class ContentStore:
    def __init__(self, local: LocalStore, records: ContentRecords) -> None:
        self.local = local
        self.records = records
        # Held by the garbage collector's sweep and by the rename+record step of a commit,
        # so a blob never lies on disk unrecorded while the sweep looks.
        self.gc_lock = asyncio.Lock()
        self._locked: set[tuple[str, str]] = set()
        self.prestager: Prestager | None = None

    async def info(self, namespace: str, digest: str) -> ContentInfo:
        digest = validate.digest(digest)
        # A record comes after its file (a commit renames, then records) and goes before it
        # (the collector removes unrecorded files): no file, no record, and no transaction to
        # say so. ctr asks this every 100 ms of a pull for each blob it has yet to write.
        if self.local.size(digest) is None:
            raise NotFound(f"content digest {digest} not found")
        return await self.records.get(namespace, digest)

    async def update(
        self, namespace: str, digest: str, labels: dict[str, str], paths: list[str]
    ) -> ContentInfo:
        return await self.records.update(namespace, validate.digest(digest), labels, paths)

    async def change_labels(
        self, namespace: str, digest: str, change: Callable[[dict[str, str]], dict[str, str]]
    ) -> ContentInfo:
        """Labels made from the current ones by `change` (run on the database thread), in
        one transaction; no write when they stay the same."""
        return await self.records.change_labels(namespace, validate.digest(digest), change)

    async def list(self, namespace: str) -> list[ContentInfo]:
        return await self.records.list(namespace)

    async def delete(self, namespace: str, digest: str) -> None:
        await self.records.delete(namespace, validate.digest(digest))

    async def read(
        self, namespace: str, digest: str, offset: int = 0, size: int = 0
    ) -> AsyncIterator[bytes]:
        """Chunks of the blob from `offset`; `size` <= 0 or past the end reads to the end."""
        info = await self.info(namespace, digest)
        if offset < 0 or offset > info.size:
            raise OutOfRange(f"offset {offset} is outside blob {digest} of {info.size} bytes")
        end = info.size if size <= 0 else min(info.size, offset + size)
        return self._chunks(digest, offset, end)

    async def _chunks(self, digest: str, offset: int, end: int) -> AsyncIterator[bytes]:
        while offset < end:
            try:
                data = await asyncio.to_thread(
                    self.local.read, digest, offset, min(READ_CHUNK, end - offset)
                )
            except FileNotFoundError as e:
                raise NotFound(f"content digest {digest} not found") from e
            if not data:
                raise FailedPrecondition(f"blob {digest} is shorter than its record")
            yield data
            offset += len(data)

    # -- writes ----------------------------------------------------------------------------

    async def writer(
        self,
        namespace: str,
        ref: str,
        total: int,
        expected: str,
        lease: str | None,
        *,
        prestage: bool = False,
    ) -> Writer:
        """Open (or resume) the ingest `ref`. AlreadyExists when `expected` is stored already;
        Unavailable while another client writes the same ref. `prestage`: a client writes
        it, so a layer may be staged for unpacking meanwhile (linerd.prestage)."""
        if expected:
            validate.digest(expected)
            # Checked again under the GC lock: a sweep may remove the blob in between, and
            # then it must be written.
            if self.local.size(expected) is not None and await self.adopt(
                namespace, expected, {}, lease
            ):
                raise AlreadyExists(f"content {expected} already exists")
        key = (namespace, ref)
        if key in self._locked:
            raise Unavailable(f"ref {ref!r} is locked by another writer")
        self._locked.add(key)
        opening = asyncio.ensure_future(
            asyncio.to_thread(self.local.open_ingest, namespace, ref, total, expected)
        )
        try:
            try:
                # The namespace's record (database thread) while the ingest opens (another).
                await self.records.ensure_namespace(namespace)
            except BaseException:
                with contextlib.suppress(Exception):
                    (await asyncio.shield(opening)).close()
                raise
            ingest = await opening
        except BaseException:
            self._locked.discard(key)
            raise
        writer = Writer(self, namespace, lease, ingest)
        if prestage and self.prestager is not None:
            writer.live = self.prestager.feed(
                ref, expected, ingest.directory / "data", ingest.offset, total
            )
        return writer

    async def put(
        self,
        namespace: str,
        digest: str,
        data: bytes,
        labels: dict[str, str],
        lease: str | None,
        change: Labeller | None = None,
    ) -> bool:
        """Store and record a small blob given whole (a pull's manifest or config): one file
        write and one transaction, where an ingest costs four thread hops, two transactions
        and its directory. False when this namespace had it already (`lease` then holds it
        all the same, and `change` makes its labels of the current ones). FailedPrecondition
        when `data` is not `digest`."""
        validate.digest(digest)
        labels = validate.labels(labels)
        faults.point("content-write")
        async with self.gc_lock:
            await asyncio.to_thread(self.local.put, digest, data)
            faults.point("content-commit")
            info = await self.records.add(namespace, digest, len(data), labels, lease, change)
        return info is not None

    async def adopt(
        self,
        namespace: str,
        digest: str,
        labels: dict[str, str],
        lease: str | None,
        change: Labeller | None = None,
    ) -> bool:
        """Record a blob that is on disk already (written by another namespace, or by
        another writer; `change`: as in `put`); False if it is not there (any more)."""
        async with self.gc_lock:
            return await self.adopt_locked(namespace, digest, labels, lease, change)

    async def adopt_locked(
        self,
        namespace: str,
        digest: str,
        labels: dict[str, str],
        lease: str | None,
        change: Labeller | None = None,
    ) -> bool:
        size = self.local.size(digest)
        if size is None:
            return False
        await self.records.add(namespace, digest, size, labels, lease, change)
        return True

    async def status(self, namespace: str, ref: str) -> IngestStatus:
        return self.local.ingest_status(namespace, ref)  # from memory

    async def list_statuses(self, namespace: str) -> list[IngestStatus]:
        # From memory: ctr asks every 100 ms while it pulls, and a thread hop cost more than
        # the answer.
        return [status for _, status in self.local.list_ingests(namespace)]

    async def abort(self, namespace: str, ref: str) -> None:
        if (namespace, ref) in self._locked:
            raise Unavailable(f"ref {ref!r} is locked by another writer")
        await asyncio.to_thread(self.local.abort, namespace, ref)

    def has_ingests(self, namespace: str) -> bool:
        return bool(self.local.list_ingests(namespace))
