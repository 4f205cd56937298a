"""Pulling an image into the store: resolve, fetch, record, unpack, all under one lease.

Layers download concurrently into resumable ingests while earlier layers unpack, each into
its own snapshot named by chain ID. Labels follow containerd's, so its GC and ctr read the
result alike. A second pull of a blob or chain already being fetched or unpacked waits for
the first instead of doing the work again.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import BinaryIO, TypeVar

import structlog

from linerd import imagespec, platforms
from linerd.content import documents
from linerd.content.live import LiveBlob, in_reader_thread
from linerd.content.store import ContentStore
from linerd.core.types import Descriptor, Image, LeaseResource, SnapshotKind
from linerd.diff.worker import StagedLayer
from linerd.errdefs import (
    AlreadyExists,
    DataLoss,
    Internal,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from linerd.gc import labels as gc_labels
from linerd.gc.collector import Collector
from linerd.imagespec import Platform
from linerd.layers import (
    WORKER_MIN_SIZE,
    apply_staged_to,
    apply_to_mounts,
    stage_stream,
    staged_target,
)
from linerd.metadata.images import ImageStore
from linerd.metadata.leases import LeaseStore
from linerd.prestage import Prestaged, Prestager
from linerd.remotes import reference
from linerd.remotes.client import RegistryClient
from linerd.remotes.hosts import HostsConfig
from linerd.snapshots.store import SnapshotStore

log = structlog.get_logger("linerd.pull")

T = TypeVar("T")
# A pull's lease outlives a daemon killed mid-pull by this much, then the collector ends it.
LEASE_LIFETIME = timedelta(hours=24)
_CONCURRENT_DOWNLOADS = 4
_WRITE_CHUNK = 1 << 20
# Layers staged at once while their parents unpack: each keeps about one core busy.
_STAGING_SLOTS = max(2, os.cpu_count() or 2)


@dataclass(slots=True)
class PullRequest:
    reference: str
    platforms: list[Platform] = field(default_factory=list)
    all_platforms: bool = False
    snapshotter: str = ""
    unpack: bool = True
    plain_http: bool = False
    username: str = ""
    secret: str = field(default="", repr=False)


@dataclass(slots=True)
class BlobState:
    descriptor: Descriptor
    offset: int = 0
    state: str = "waiting"


_RANK = {
    "waiting": 0,
    "downloading": 1,
    "downloaded": 2,
    "exists": 2,
    "unpacking": 3,
    "unpacked": 4,
}


class Progress:
    """What a pull has done so far, for whoever watches (the Transfer service)."""

    def __init__(self) -> None:
        self.blobs: dict[str, BlobState] = {}
        self.changed = asyncio.Event()
        self.fetched = 0  # bytes that came over the network

    def add(self, desc: Descriptor, state: str = "waiting") -> None:
        if desc.digest not in self.blobs:
            self.blobs[desc.digest] = BlobState(desc, state=state)
            self.changed.set()

    def update(self, digest: str, *, offset: int | None = None, state: str | None = None) -> None:
        blob = self.blobs.get(digest)
        if blob is None:
            return
        if offset is not None:
            blob.offset = offset
        # States only move forward: a download finishing must not hide that unpacking began.
        if state is not None and _RANK[state] >= _RANK[blob.state]:
            blob.state = state
        self.changed.set()


def _first(group: BaseExceptionGroup) -> BaseException:
    """The first real error of a task group (cancellations are only its echo)."""
    for error in group.exceptions:
        if isinstance(error, BaseExceptionGroup):
            return _first(error)
        if not isinstance(error, asyncio.CancelledError):
            return error
    return group.exceptions[0]


class _SingleFlight:
    """One run per key at a time; concurrent callers share its result."""

    def __init__(self) -> None:
        self._running: dict[tuple[str, ...], asyncio.Future[object]] = {}

    async def run(self, key: tuple[str, ...], work: Callable[[], Awaitable[T]]) -> T:
        running = self._running.get(key)
        if running is not None:
            return await asyncio.shield(running)  # type: ignore[return-value]
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self._running[key] = future
        try:
            result = await work()
        except BaseException as e:
            future.set_exception(e)
            future.exception()  # retrieved: no "never retrieved" warning when nobody waits
            raise
        else:
            future.set_result(result)
            return result
        finally:
            del self._running[key]


@dataclass(frozen=True, slots=True)
class _Layer:
    """One layer of the image being unpacked, and where it goes."""

    desc: Descriptor
    diff_id: str
    chain_id: str
    parent: str  # the chain ID below ("" for the first layer)


async def _finish_thread(fn: Callable[[], T]) -> T:
    """Run blocking `fn` in a thread; if cancelled meanwhile, still wait for the thread to
    end before re-raising, so that the caller's cleanup never races the thread's writes.
    (A thread blocked on a download ends when the download is cancelled too.)"""
    future = asyncio.ensure_future(in_reader_thread(fn))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        with contextlib.suppress(BaseException):
            await future
        raise


@dataclass(slots=True)
class _Job:
    """One pull in progress."""

    namespace: str
    lease: str
    ref: reference.Reference
    client: RegistryClient
    progress: Progress
    source_label: tuple[str, str] | None  # None: no registry source (an import)


class Puller:
    def __init__(
        self,
        content: ContentStore,
        images: ImageStore,
        leases: LeaseStore,
        snapshots: dict[str, SnapshotStore],
        default_snapshotter: str,
        gc: Collector,
        hosts: Callable[[], HostsConfig],
        scratch: Path,
    ) -> None:
        self._content = content
        self._images = images
        self._leases = leases
        self._snapshots = snapshots
        self._default_snapshotter = default_snapshotter
        self._gc = gc
        self._hosts = hosts
        self._scratch = scratch
        self._downloads = _SingleFlight()
        self._small_fetches = _SingleFlight()
        self._unpacks = _SingleFlight()
        self._download_slots = asyncio.Semaphore(_CONCURRENT_DOWNLOADS)
        self._staging_slots = asyncio.Semaphore(_STAGING_SLOTS)
        self._live: dict[tuple[str, str], LiveBlob] = {}
        # Called with the seconds each layer took to unpack (metrics).
        self.on_unpack: Callable[[float], None] | None = None

    async def pull(
        self, namespace: str, request: PullRequest, progress: Progress
    ) -> tuple[Image, bool]:
        """Pull (and unpack) `request.reference`; returns the image and whether it is new."""
        ref = reference.parse(request.reference)
        snapshotter = request.snapshotter or self._default_snapshotter
        if request.unpack and snapshotter not in self._snapshots:
            raise InvalidArgument(f"snapshotter {snapshotter!r} is not loaded")
        lease = f"pull-{time.time_ns()}-{secrets.token_hex(3)}"
        await self._leases.create(namespace, lease, gc_labels.expire_after(LEASE_LIFETIME))
        started = time.monotonic()
        try:
            async with RegistryClient(self._hosts_for(ref, request)) as client:
                host = ref.host
                job = _Job(
                    namespace,
                    lease,
                    ref,
                    client,
                    progress,
                    (gc_labels.source_key(host), ref.repository),
                )
                result = await self._pull(job, request, snapshotter)
        finally:
            with contextlib.suppress(NotFound):
                await self._leases.delete(namespace, lease)
            self._gc.schedule()
        log.info(
            "pulled",
            reference=str(ref),
            digest=result[0].target.digest,
            seconds=round(time.monotonic() - started, 3),
        )
        return result

    def _hosts_for(self, ref: reference.Reference, request: PullRequest) -> HostsConfig:
        return self._hosts().for_request(
            ref.host, request.plain_http, request.username, request.secret
        )

    async def _pull(self, job: _Job, request: PullRequest, snapshotter: str) -> tuple[Image, bool]:
        _, root = await job.client.resolve(job.ref)
        job.progress.add(root)
        data = await self._fetch_small(
            job, root, "index" if root.media_type in imagespec.INDEXES else "manifest"
        )
        if root.media_type in imagespec.INDEXES:
            manifests = await self._children(job, root, data, request)
        else:
            manifests = [(root, data, True)]  # a lone manifest is unpacked whatever its platform
        try:
            async with asyncio.TaskGroup() as tasks:
                for desc, body, unpack in manifests:
                    await self._manifest(
                        job, tasks, desc, body, snapshotter, request.unpack and unpack
                    )
        except BaseExceptionGroup as group:
            raise _first(group) from None

        image = Image(name=str(job.ref), target=root)
        try:
            return await self._images.create(job.namespace, image), True
        except AlreadyExists:
            return await self._images.update(job.namespace, image, ["target"]), False

    async def _manifest(
        self,
        job: _Job,
        tasks: asyncio.TaskGroup,
        desc: Descriptor,
        body: bytes,
        snapshotter: str,
        unpack: bool,
    ) -> None:
        """Record one manifest's labels and config; start its downloads (and unpack)."""
        manifest = imagespec.parse_manifest(body, desc.digest)
        labels = gc_labels.manifest_refs(
            manifest.config.digest, [layer.digest for layer in manifest.layers]
        )
        await self._label(job, desc.digest, labels)
        job.progress.add(manifest.config)
        for layer in manifest.layers:
            job.progress.add(layer)
        config_bytes = await self._fetch_small(job, manifest.config, "config")
        config = imagespec.parse_config(config_bytes, manifest.config.digest)
        if len(config.diff_ids) != len(manifest.layers):
            raise InvalidArgument(
                f"manifest {desc.digest} has {len(manifest.layers)} layers but its config "
                f"lists {len(config.diff_ids)} diff ids"
            )
        for layer in manifest.layers:
            if layer.media_type not in imagespec.LAYERS:
                raise InvalidArgument(
                    f"layer {layer.digest}: unsupported media type {layer.media_type!r}"
                )
        downloads = {
            layer.digest: tasks.create_task(self._fetch_layer(job, layer))
            for layer in manifest.layers
        }
        if unpack:
            tasks.create_task(self._unpack(job, snapshotter, manifest, config, downloads))

    async def _children(
        self, job: _Job, root: Descriptor, data: bytes, request: PullRequest
    ) -> list[tuple[Descriptor, bytes, bool]]:
        """The index's manifests to fetch, each with whether to unpack it: the first match of
        the wanted platforms (all manifests are fetched with `all_platforms`)."""
        entries = imagespec.index_manifests(data, root.digest)
        wanted = platforms.or_host(request.platforms)
        match = platforms.first(entries, imagespec.entry_platform, wanted)
        if match is None and not request.all_platforms:
            raise NotFound(
                f"{job.ref}: no manifest for platform {', '.join(map(str, wanted))} in the index"
            )
        chosen = entries if request.all_platforms else [match]
        await self._label(
            job,
            root.digest,
            gc_labels.index_refs(e.descriptor.digest for e in chosen if e is not None),
        )
        result = []
        for entry in chosen:
            assert entry is not None
            job.progress.add(entry.descriptor)
            body = await self._fetch_small(job, entry.descriptor, "manifest")
            result.append((entry.descriptor, body, entry is match))
        return result

    async def _label(self, job: _Job, digest: str, labels: dict[str, str]) -> None:
        """Set `labels` and record the source repository (a comma-separated list, as
        containerd keeps it, so a push can mount the blob from any of them)."""
        if job.source_label is None:
            await self._content.update(job.namespace, digest, labels, gc_labels.field_paths(labels))
            return
        key, repository = job.source_label
        info = await self._content.info(job.namespace, digest)
        sources = [r for r in info.labels.get(key, "").split(",") if r]
        if repository not in sources:
            sources.append(repository)
        labels = {**labels, key: ",".join(sources)}
        await self._content.update(job.namespace, digest, labels, gc_labels.field_paths(labels))

    # -- fetching ---------------------------------------------------------------------------

    async def _fetch_small(self, job: _Job, desc: Descriptor, kind: str) -> bytes:
        """A manifest, index or config: from the store if there, else fetched and stored."""
        documents.check_size(desc, kind)
        try:
            info = await self._content.info(job.namespace, desc.digest)
        except NotFound:
            pass
        else:
            documents.check_record(info, desc, kind)
            await self._hold(job, desc)  # before reading: the collector keeps what is held
            job.progress.update(desc.digest, offset=desc.size, state="exists")
            path = self._content.local.path(desc.digest)
            return await asyncio.to_thread(documents.read_verified, path, desc, kind)
        job.progress.update(desc.digest, state="downloading")
        # Concurrent pulls of one image share the fetch (a second writer of the same ref would
        # be refused as locked).
        data = await self._small_fetches.run(
            (job.namespace, desc.digest), lambda: self._fetch_and_store(job, desc, kind)
        )
        await self._hold(job, desc)
        job.progress.update(desc.digest, offset=desc.size, state="downloaded")
        return data

    async def _fetch_and_store(self, job: _Job, desc: Descriptor, kind: str) -> bytes:
        if kind == "config":
            chunks = [c async for c in job.client.fetch_blob(job.ref, desc)]
            data = b"".join(chunks)
        else:
            data = await job.client.fetch_manifest(job.ref, desc)
        job.progress.fetched += len(data)
        await self._store(job, f"{kind}-{desc.digest}", desc, data)
        return data

    async def _store(self, job: _Job, ref: str, desc: Descriptor, data: bytes) -> None:
        labels = {job.source_label[0]: job.source_label[1]}
        try:
            writer = await self._content.writer(
                job.namespace, ref, desc.size, desc.digest, job.lease
            )
        except AlreadyExists:
            await self._label(job, desc.digest, {})  # adopted from another namespace
            return
        try:
            await writer.write(0, data, desc.size)
            await writer.commit(desc.size, desc.digest, labels)
        except AlreadyExists:
            pass
        finally:
            writer.close()

    async def _fetch_layer(self, job: _Job, desc: Descriptor) -> None:
        await self._downloads.run((job.namespace, desc.digest), lambda: self._download(job, desc))
        await self._hold(job, desc)

    async def _hold(self, job: _Job, desc: Descriptor) -> None:
        """Put the blob in this pull's lease too: another pull may have fetched it, and its
        lease ends with it."""
        with contextlib.suppress(NotFound):
            await self._leases.add_resource(
                job.namespace, job.lease, LeaseResource(desc.digest, "content")
            )

    async def _download(self, job: _Job, desc: Descriptor) -> None:
        progress = job.progress
        labels = {job.source_label[0]: job.source_label[1]}
        ref = f"layer-{desc.digest}"
        try:
            writer = await self._content.writer(
                job.namespace, ref, desc.size, desc.digest, job.lease
            )
        except AlreadyExists:
            await self._label(job, desc.digest, {})
            progress.update(desc.digest, offset=desc.size, state="exists")
            return
        keep = True
        key = (job.namespace, desc.digest)
        live = self._live[key] = LiveBlob(writer.ingest.directory / "data", writer.status().offset)
        error: BaseException | None = None
        try:
            async with self._download_slots:
                offset = writer.status().offset
                progress.update(desc.digest, offset=offset, state="downloading")
                hasher = writer.ingest.hasher() if offset else None
                # The socket yields ~64 KiB at a time; the ingest gets 1 MiB writes, each a
                # thread hop, and progress counts only what was written.
                pending: list[bytes] = []
                size = 0
                async with contextlib.aclosing(
                    job.client.fetch_blob(job.ref, desc, offset=offset, hasher=hasher)
                ) as chunks:
                    async for chunk in chunks:
                        pending.append(chunk)
                        size += len(chunk)
                        if size < _WRITE_CHUNK and offset + size < desc.size:
                            continue
                        data = b"".join(pending) if len(pending) > 1 else pending[0]
                        pending.clear()
                        size = 0
                        await writer.write(offset, data)
                        offset += len(data)
                        progress.fetched += len(data)
                        progress.update(desc.digest, offset=offset)
                        live.grew(offset)
            with contextlib.suppress(AlreadyExists):
                await writer.commit(desc.size, desc.digest, labels)
            progress.update(desc.digest, state="downloaded")
        except BaseException as e:
            # Keep a partial ingest to resume from, unless it holds nothing or bytes that lied.
            keep = not isinstance(e, DataLoss) and writer.status().offset > 0
            error = e
            raise
        finally:
            live.finish(error)
            del self._live[key]
            writer.close()
            if not keep:
                with contextlib.suppress(NotFound, Unavailable):
                    await self._content.abort(job.namespace, ref)

    # -- unpacking --------------------------------------------------------------------------

    @property
    def default_snapshotter(self) -> str:
        return self._default_snapshotter

    def has_snapshotter(self, name: str) -> bool:
        return name in self._snapshots

    async def unpack_image(
        self,
        namespace: str,
        target: Descriptor,
        snapshotter: str,
        lease: str,
        progress: Progress | None = None,
    ) -> list[str]:
        """Unpack an image whose content is all in the store (an import), as a pull unpacks:
        one snapshot per chain ID under `lease`, the config labelled with the top one. An
        index: its manifest for the daemon's platform (NotFound if it has none); a lone
        manifest whatever its platform. Returns the chain IDs."""
        if snapshotter not in self._snapshots:
            raise InvalidArgument(f"snapshotter {snapshotter!r} is not loaded")
        # No registry: the unpack path reads only the store (ref and client stay unused).
        job = _Job(namespace, lease, None, None, progress or Progress(), None)  # type: ignore[arg-type]
        desc = target
        if target.media_type in imagespec.INDEXES:
            body = await documents.read_document(self._content, namespace, target, "index")
            here = platforms.host_platform()
            entries = imagespec.index_manifests(body, target.digest)
            match = platforms.first(entries, imagespec.entry_platform, [here])
            if match is None:
                raise NotFound(f"index {target.digest} has no manifest for platform {here}")
            desc = match.descriptor
        body = await documents.read_document(self._content, namespace, desc, "manifest")
        manifest = imagespec.parse_manifest(body, desc.digest)
        body = await documents.read_document(self._content, namespace, manifest.config, "config")
        config = imagespec.parse_config(body, manifest.config.digest)
        if len(config.diff_ids) != len(manifest.layers):
            raise InvalidArgument(
                f"manifest {desc.digest} has {len(manifest.layers)} layers but its config "
                f"lists {len(config.diff_ids)} diff ids"
            )
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        for layer in manifest.layers:
            job.progress.add(layer, "exists")
        await self._unpack(
            job, snapshotter, manifest, config, {layer.digest: done for layer in manifest.layers}
        )
        return imagespec.chain_ids(config.diff_ids)

    async def _unpack(
        self,
        job: _Job,
        snapshotter: str,
        manifest: imagespec.Manifest,
        config: imagespec.ImageConfig,
        downloads: dict[str, asyncio.Future[None]],
    ) -> None:
        store = self._snapshots[snapshotter]
        chain = imagespec.chain_ids(config.diff_ids)
        try:
            async with asyncio.TaskGroup() as tasks:
                parent = ""
                below: asyncio.Task[None] | None = None
                for layer, diff_id, chain_id in zip(
                    manifest.layers, config.diff_ids, chain, strict=True
                ):
                    work = functools.partial(
                        self._unpack_layer,
                        job,
                        store,
                        _Layer(layer, diff_id, chain_id, parent),
                        downloads[layer.digest],
                        below,
                    )
                    below = tasks.create_task(
                        self._unpacks.run((job.namespace, snapshotter, chain_id), work)
                    )
                    parent = chain_id
        except BaseExceptionGroup as group:
            raise _first(group) from None
        await asyncio.gather(*downloads.values())
        if chain:
            await self._label(
                job,
                manifest.config.digest,
                gc_labels.snapshot_ref(snapshotter, chain[-1]),
            )

    async def _layer_reader(
        self, job: _Job, layer: Descriptor, download: asyncio.Future[None]
    ) -> BinaryIO:
        """The layer's bytes: as they download if they are still coming, else the blob."""
        live = self._live.get((job.namespace, layer.digest))
        if live is not None:
            with contextlib.suppress(FileNotFoundError):  # committed just now
                return await asyncio.to_thread(live.open)  # type: ignore[return-value]
        await download
        return await asyncio.to_thread(open, self._content.local.path(layer.digest), "rb")

    async def _unpack_layer(
        self,
        job: _Job,
        store: SnapshotStore,
        layer: _Layer,
        download: asyncio.Future[None],
        below: asyncio.Task[None] | None,
    ) -> None:
        """Unpack one layer once the layer below is unpacked (`below`). While that one is
        still unpacking, this one is staged meanwhile (decompressed, hashed and written to a
        scratch directory) and only moved into its snapshot once the parent exists: so the
        layers of an image unpack in parallel."""
        desc = layer.desc
        try:
            await store.stat(job.namespace, layer.chain_id)
        except NotFound:
            pass
        else:
            job.progress.update(desc.digest, state="unpacked")
            return
        staged = await self._stage(job, desc, download, below)
        try:
            if below is not None:
                await below
            await self._unpack_into_snapshot(job, store, layer, download, staged)
        finally:
            if staged is not None:
                await asyncio.to_thread(Prestager.drop, staged)
        await self._content.update(
            job.namespace,
            desc.digest,
            {gc_labels.UNCOMPRESSED: layer.diff_id},
            [f"labels.{gc_labels.UNCOMPRESSED}"],
        )
        job.progress.update(desc.digest, state="unpacked")

    async def _stage(
        self,
        job: _Job,
        desc: Descriptor,
        download: asyncio.Future[None],
        below: asyncio.Task[None] | None,
    ) -> Prestaged | None:
        """Phase one of a staged unpack, if the parent is still being unpacked; else None."""
        area = self._content.prestager
        if below is None or below.done() or area is None:
            return None
        async with self._staging_slots:
            if below.done():  # the parent got there first: extract straight into a snapshot
                return None
            staging = await asyncio.to_thread(area.new_dir)
            try:
                started = time.monotonic()
                raw = await self._layer_reader(job, desc, download)
                job.progress.update(desc.digest, state="unpacking")
                name = f"layer {desc.digest}"

                def stage() -> StagedLayer:
                    with raw:
                        return stage_stream(raw, desc.media_type, staging, name, size=desc.size)

                staged = await _finish_thread(stage)
                self._unpacked(started)
            except BaseException:
                await asyncio.to_thread(area.remove_dir, staging)
                raise
        return Prestaged(staged, staging)

    async def _unpack_into_snapshot(
        self,
        job: _Job,
        store: SnapshotStore,
        layer: _Layer,
        download: asyncio.Future[None],
        staged: Prestaged | None,
    ) -> None:
        desc = layer.desc
        trusted = store.root.parent
        if staged is not None:
            self._check_diff_id(layer, staged.staged.applied)  # before any snapshot is made
        key = f"extract-{time.time_ns()}-{secrets.token_hex(4)} {layer.chain_id}"
        mounts = await store.create(
            job.namespace, key, layer.parent, {}, SnapshotKind.ACTIVE, job.lease
        )
        area = self._content.prestager
        scratch: Path | None = None
        try:
            if staged is not None:

                def move() -> None:
                    target = staged_target(mounts, trusted, staged.directory)
                    if target is None:  # our snapshotters always give one
                        raise Internal(f"layer {desc.digest}: staged where it cannot be moved")
                    apply_staged_to(staged.staged, staged.directory, target)

                await _finish_thread(move)
            else:
                started = time.monotonic()
                if area is not None and desc.size >= WORKER_MIN_SIZE:
                    scratch = await asyncio.to_thread(area.new_dir)
                raw = await self._layer_reader(job, desc, download)
                job.progress.update(desc.digest, state="unpacking")

                def apply() -> Descriptor:
                    with raw:
                        return apply_to_mounts(
                            raw,
                            desc.media_type,
                            mounts,
                            trusted,
                            self._scratch,
                            name=f"layer {desc.digest}",
                            size=desc.size,
                            staging=scratch,
                        )

                self._check_diff_id(layer, await _finish_thread(apply))
                self._unpacked(started)
            await download  # the compressed bytes' digest checks out before we commit
            await store.commit(job.namespace, layer.chain_id, key, {}, job.lease)
        except AlreadyExists:
            await store.remove(job.namespace, key)  # unpacked meanwhile by someone else
        except BaseException:
            with contextlib.suppress(Exception):
                await store.remove(job.namespace, key)
            raise
        finally:
            if scratch is not None:
                await asyncio.to_thread(Prestager.remove_dir, scratch)

    @staticmethod
    def _check_diff_id(layer: _Layer, applied: Descriptor) -> None:
        if applied.digest != layer.diff_id:
            raise InvalidArgument(
                f"layer {layer.desc.digest}: unpacked to {applied.digest}, "
                f"but the image config says {layer.diff_id}"
            )

    def _unpacked(self, started: float) -> None:
        if self.on_unpack is not None:
            self.on_unpack(time.monotonic() - started)
