"""The one unpacker: layer blobs onto snapshots, for pulls, imports and Diff/Apply.

Every layer goes onto its mounts by one sequence (`Unpacker._onto`): a layer already staged
(decompressed, hashed and written to a scratch directory: by a pull while the parent layer
unpacked, or by the prestager while a client wrote the blob) is moved into place; else the
blob is extracted onto the snapshot, a large one in a worker process, a small one in a
thread. Whoever staged a layer drops it afterwards.

An image unpack (`unpack`) makes one committed snapshot per chain ID under the caller's
lease, the layers in parallel: while a layer's parent is still unpacking, the layer is staged
meanwhile and only moved in once the parent exists. A chain already being unpacked by
another pull or import is waited for, not unpacked twice. Each layer's blob gets its
`containerd.io/uncompressed` label; the caller labels the config with the top chain ID.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import structlog

from linerd import imagespec
from linerd.asyncutil import SingleFlight, finish_thread, first_error
from linerd.content import documents
from linerd.content.store import ContentStore
from linerd.core.types import Descriptor, Mount, SnapshotKind
from linerd.diff.compression import SUPPORTED_MEDIA_TYPES
from linerd.diff.worker import StagedLayer
from linerd.errdefs import AlreadyExists, InvalidArgument, NotFound
from linerd.gc import labels as gc_labels
from linerd.layers import (
    apply_staged_to,
    apply_to_mounts,
    stage_stream,
    staged_target,
)
from linerd.prestage import Prestaged, Prestager
from linerd.snapshots.store import SnapshotStore

log = structlog.get_logger("linerd.unpack")

# Layers staged at once while their parents unpack: each keeps about one core busy.
_STAGING_SLOTS = max(2, os.cpu_count() or 2)

# Told each layer's state as it goes ("unpacking", "unpacked"), by blob digest.
Report = Callable[[str, str], None]
# The bytes of a layer: as they download if they still are, else the blob's file.
Reader = Callable[[Descriptor, "asyncio.Future[None]"], Awaitable[BinaryIO]]


def _no_report(digest: str, state: str) -> None:
    pass


@dataclass(frozen=True, slots=True)
class _Layer:
    """One layer of the image being unpacked, and where it goes."""

    desc: Descriptor
    diff_id: str
    chain_id: str
    parent: str  # the chain ID below ("" for the first layer)


class Unpacker:
    def __init__(
        self,
        content: ContentStore,
        snapshots: Mapping[str, SnapshotStore],
        snapshots_root: Path,
        scratch: Path,
    ) -> None:
        self._content = content
        self._snapshots = snapshots
        self._trusted = snapshots_root  # mounts under it are ours: written without mounting
        self._scratch = scratch  # where other mounts are mounted to be written through
        self._unpacks = SingleFlight()
        self._staging_slots = asyncio.Semaphore(_STAGING_SLOTS)
        # Called with the seconds each layer took to extract (metrics).
        self.on_unpack: Callable[[float], None] | None = None

    def snapshotter(self, name: str) -> SnapshotStore:
        store = self._snapshots.get(name)
        if store is None:
            raise InvalidArgument(f"snapshotter {name!r} is not loaded")
        return store

    # -- one layer onto mounts: the sequence every caller uses --------------------------------

    async def _onto(
        self,
        mounts: Sequence[Mount],
        desc: Descriptor,
        source: Path | Callable[[], Awaitable[BinaryIO]],
        staged: Prestaged | None = None,
        on_start: Callable[[], None] | None = None,
    ) -> Descriptor:
        """Put the layer `desc` onto `mounts`; returns the uncompressed descriptor (its digest
        the diff ID). From `staged` if it can be moved there (same filesystem, our own
        snapshot directory), else extracted from `source`: a path (opened in the worker
        thread) or an opener of the bytes. The caller keeps `staged` and drops it."""
        name = f"layer {desc.digest}"
        if staged is not None:

            def move() -> bool:
                if desc.media_type not in SUPPORTED_MEDIA_TYPES:
                    return False
                target = staged_target(mounts, self._trusted, staged.directory)
                if target is None:
                    return False
                apply_staged_to(staged.staged, staged.directory, target)
                return True

            if await finish_thread(move):
                return staged.staged.applied
        started = time.monotonic()
        raw = None if isinstance(source, Path) else await source()
        if on_start is not None:
            on_start()

        def extract() -> Descriptor:
            with open(source, "rb") if raw is None else raw as stream:  # type: ignore[arg-type]
                return apply_to_mounts(
                    stream,
                    desc.media_type,
                    mounts,
                    self._trusted,
                    self._scratch,
                    name=name,
                    size=desc.size,
                )

        applied = await finish_thread(extract)
        self._observe(started)
        return applied

    def _observe(self, started: float) -> None:
        if self.on_unpack is not None:
            self.on_unpack(time.monotonic() - started)

    # -- Diff/Apply ---------------------------------------------------------------------------

    async def apply(self, namespace: str, desc: Descriptor, mounts: Sequence[Mount]) -> Descriptor:
        """Apply the layer blob `desc` (media type and digest; this namespace's) onto
        `mounts`, finishing the stage the prestager made while a client wrote it, if any."""
        info = await self._content.info(namespace, desc.digest)  # NotFound when not ours
        blob = Descriptor(desc.media_type, desc.digest, info.size)
        prestager = self._content.prestager
        prestaged = await prestager.take(desc.digest) if prestager is not None else None
        try:
            applied = await self._onto(
                mounts, blob, self._content.local.path(desc.digest), prestaged
            )
            if prestaged is not None and applied is prestaged.staged.applied:
                log.debug("layer applied from its prestage", digest=desc.digest)
            return applied
        finally:
            if prestaged is not None:
                await asyncio.to_thread(Prestager.drop, prestaged)

    # -- images -------------------------------------------------------------------------------

    async def unpack(
        self,
        namespace: str,
        lease: str,
        snapshotter: str,
        manifest: imagespec.Manifest,
        config: imagespec.ImageConfig,
        downloads: Mapping[str, asyncio.Future[None]],
        reader: Reader | None = None,
        report: Report = _no_report,
    ) -> list[str]:
        """Unpack the manifest's layers into `snapshotter`, one committed snapshot per chain
        ID under `lease`; returns the chain IDs. `downloads` completes, per layer digest, once
        its blob is committed (and its digest checked); `reader` opens a layer's bytes
        before that (default: the committed blob, once downloaded)."""
        store = self.snapshotter(snapshotter)
        read = reader or self._blob_reader
        chain = imagespec.chain_ids(config.diff_ids)
        try:
            # Each committed layer's usage walk waits for the last commit: beside the layers
            # above, it slowed their moves and commits, the pull's last steps.
            with store.measuring_after():
                async with asyncio.TaskGroup() as tasks:
                    parent = ""
                    below: asyncio.Task[None] | None = None
                    for layer, diff_id, chain_id in zip(
                        manifest.layers, config.diff_ids, chain, strict=True
                    ):
                        work = functools.partial(
                            self._unpack_layer,
                            namespace,
                            lease,
                            store,
                            _Layer(layer, diff_id, chain_id, parent),
                            downloads[layer.digest],
                            below,
                            read,
                            report,
                        )
                        below = tasks.create_task(
                            self._unpacks.run((namespace, snapshotter, chain_id), work)
                        )
                        parent = chain_id
        except BaseExceptionGroup as group:
            raise first_error(group) from None
        await asyncio.gather(*downloads.values())
        return chain

    async def unpack_image(
        self,
        namespace: str,
        target: Descriptor,
        snapshotter: str,
        lease: str,
        report: Report = _no_report,
    ) -> list[str]:
        """Unpack an image whose content is all in the store (an import), as a pull unpacks,
        and label its config with the top snapshot. An index: its manifest for this
        machine's platform (NotFound if it has none); a lone manifest whatever its platform.
        Returns the chain IDs."""
        self.snapshotter(snapshotter)
        image = await documents.read_image(self._content, namespace, target)
        desc, manifest, config = image.manifest_desc, image.manifest, image.config
        check_layers(desc, manifest, config)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        chain = await self.unpack(
            namespace,
            lease,
            snapshotter,
            manifest,
            config,
            {layer.digest: done for layer in manifest.layers},
            report=report,
        )
        if chain:
            labels = gc_labels.snapshot_ref(snapshotter, chain[-1])
            await self._content.update(
                namespace, manifest.config.digest, labels, gc_labels.field_paths(labels)
            )
        return chain

    async def _blob_reader(self, layer: Descriptor, download: asyncio.Future[None]) -> BinaryIO:
        await download
        return await asyncio.to_thread(open, self._content.local.path(layer.digest), "rb")

    async def _unpack_layer(
        self,
        namespace: str,
        lease: str,
        store: SnapshotStore,
        layer: _Layer,
        download: asyncio.Future[None],
        below: asyncio.Task[None] | None,
        read: Reader,
        report: Report,
    ) -> None:
        """Unpack one layer once the layer below is unpacked (`below`). While that one is
        still unpacking, this one is staged meanwhile and moved in once the parent exists:
        so the layers of an image unpack in parallel."""
        desc = layer.desc
        try:
            await store.stat(namespace, layer.chain_id)
        except NotFound:
            pass
        else:
            report(desc.digest, "unpacked")
            return
        try:
            staged = await self._stage(desc, download, below, read, report)
            try:
                if below is not None:
                    await below
                await self._into_snapshot(
                    namespace, lease, store, layer, download, staged, read, report
                )
            finally:
                if staged is not None:
                    await asyncio.to_thread(Prestager.drop, staged)
        except Exception:
            # Bytes read as they download can fail here (a gzip checksum) before their
            # download refuses them (the digest): that refusal is the error to report, so
            # it lands first in the pull's task group.
            if not download.done():
                await asyncio.wait([download])
            raise
        await self._content.update(
            namespace,
            desc.digest,
            {gc_labels.UNCOMPRESSED: layer.diff_id},
            [f"labels.{gc_labels.UNCOMPRESSED}"],
        )
        report(desc.digest, "unpacked")

    async def _stage(
        self,
        desc: Descriptor,
        download: asyncio.Future[None],
        below: asyncio.Task[None] | None,
        read: Reader,
        report: Report,
    ) -> Prestaged | None:
        """Stage the layer if its parent is still being unpacked; else None."""
        area = self._content.prestager
        if below is None or below.done() or area is None:
            return None
        async with self._staging_slots:
            if below.done():  # the parent got there first: extract straight into a snapshot
                return None
            staging = await asyncio.to_thread(area.new_dir)
            try:
                started = time.monotonic()
                raw = await read(desc, download)
                report(desc.digest, "unpacking")
                name = f"layer {desc.digest}"

                def stage() -> StagedLayer:
                    with raw:
                        return stage_stream(raw, desc.media_type, staging, name, size=desc.size)

                staged = await finish_thread(stage)
                self._observe(started)
            except BaseException:
                await asyncio.to_thread(area.remove_dir, staging)
                raise
        return Prestaged(staged, staging)

    async def _into_snapshot(
        self,
        namespace: str,
        lease: str,
        store: SnapshotStore,
        layer: _Layer,
        download: asyncio.Future[None],
        staged: Prestaged | None,
        read: Reader,
        report: Report,
    ) -> None:
        desc = layer.desc
        if staged is not None:
            _check_diff_id(layer, staged.staged.applied)  # before any snapshot is made
        key = f"extract-{time.time_ns()}-{secrets.token_hex(4)} {layer.chain_id}"
        mounts = await store.create(namespace, key, layer.parent, {}, SnapshotKind.ACTIVE, lease)
        try:
            applied = await self._onto(
                mounts,
                desc,
                functools.partial(read, desc, download),
                staged,
                on_start=lambda: report(desc.digest, "unpacking"),
            )
            _check_diff_id(layer, applied)
            await download  # the compressed bytes' digest checks out before we commit
            await store.commit(namespace, layer.chain_id, key, {}, lease)
        except AlreadyExists:
            await store.remove(namespace, key)  # unpacked meanwhile by someone else
        except BaseException:
            with contextlib.suppress(Exception):
                await store.remove(namespace, key)
            raise


def check_layers(
    desc: Descriptor, manifest: imagespec.Manifest, config: imagespec.ImageConfig
) -> None:
    """InvalidArgument unless the config has a diff ID per layer of the manifest."""
    if len(config.diff_ids) != len(manifest.layers):
        raise InvalidArgument(
            f"manifest {desc.digest} has {len(manifest.layers)} layers but its config "
            f"lists {len(config.diff_ids)} diff ids"
        )


def _check_diff_id(layer: _Layer, applied: Descriptor) -> None:
    if applied.digest != layer.diff_id:
        raise InvalidArgument(
            f"layer {layer.desc.digest}: unpacked to {applied.digest}, "
            f"but the image config says {layer.diff_id}"
        )
