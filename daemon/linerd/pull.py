"""Pulling an image into the store: resolve, fetch, record, unpack, all under one lease.

Layers download concurrently into resumable ingests while earlier layers unpack (through
`linerd.unpack`, reading each layer's bytes as they arrive), each into its own snapshot
named by chain ID. Labels follow containerd's, so its GC and ctr read the
result alike. A second pull of a blob or chain already being fetched or unpacked waits for
the first instead of doing the work again.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import BinaryIO

import structlog

from liner_common import platforms
from linerd import imagespec
from linerd.asyncutil import SingleFlight, first_error
from linerd.content import documents
from linerd.content.documents import PlatformImage
from linerd.content.live import LiveBlob
from linerd.content.store import ContentStore
from linerd.core.types import Descriptor, Image, LeaseResource
from linerd.errdefs import (
    AlreadyExists,
    DataLoss,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from linerd.gc import labels as gc_labels
from linerd.gc.collector import Collector
from linerd.imagespec import Platform
from linerd.metadata.images import ImageStore
from linerd.metadata.leases import LeaseStore
from linerd.remotes import reference
from linerd.remotes.client import RegistryClient
from linerd.remotes.hosts import HostsConfig
from linerd.remotes.pool import ClientPool
from linerd.unpack import Unpacker, check_layers

log = structlog.get_logger("linerd.pull")

# A pull's lease outlives a daemon killed mid-pull by this much, then the collector ends it.
LEASE_LIFETIME = timedelta(hours=24)
_CONCURRENT_DOWNLOADS = 4
# How many references' last resolved roots a puller remembers (`Puller._roots`).
_ROOTS_KEPT = 1024
_WRITE_CHUNK = 1 << 20


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
    # The caller's registry configuration instead of the daemon's (the CRI's own auth).
    hosts: HostsConfig | None = None
    # Labels of the image record the pull makes (the CRI's, in the same transaction).
    labels: dict[str, str] = field(default_factory=dict)


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


@dataclass(frozen=True, slots=True)
class Pulled:
    image: Image  # the record the pull made or updated
    created: bool  # False: a record of that name existed and now points here
    # The manifest chosen for the pull's platforms (a lone manifest whatever its platform)
    # and its config, as the pull read and verified them; None if it chose none.
    platform_image: PlatformImage | None


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


@dataclass(slots=True)
class _Job:
    """One pull in progress."""

    namespace: str
    lease: str
    ref: reference.Reference
    client: RegistryClient
    progress: Progress
    source_label: tuple[str, str]  # the distribution source label: key, repository
    # The lease's creation, made while the reference resolves: awaited before any blob.
    lease_made: asyncio.Future[None]
    # Config digest -> the snapshot label its record got as this pull stored it.
    snapshot_labels: dict[str, dict[str, str]] = field(default_factory=dict)


# Judges the image before anything but its root is fetched and before its record exists:
# (namespace, reference, root descriptor, root bytes, the pull's registry client).
Admit = Callable[[str, reference.Reference, Descriptor, bytes, RegistryClient], Awaitable[None]]


def _labeller(job: _Job, labels: dict[str, str]) -> Callable[[dict[str, str]], dict[str, str]]:
    """Labels made of a blob's current ones: `labels` set, and the pull's source repository
    added (a comma-separated list, as containerd keeps it, so a push can mount the blob from
    any of them). Run on the database thread."""
    key, repository = job.source_label

    def change(current: dict[str, str]) -> dict[str, str]:
        sources = [r for r in current.get(key, "").split(",") if r]
        if repository not in sources:
            sources.append(repository)
        return {**current, **labels, key: ",".join(sources)}

    return change


def _manifest_labels(desc: Descriptor) -> Callable[[bytes], dict[str, str]]:
    """A manifest's references to its config and layers, read from its bytes (the GC's)."""

    def labels_of(data: bytes) -> dict[str, str]:
        manifest = imagespec.parse_manifest(data, desc.digest)
        return gc_labels.manifest_refs(
            manifest.config.digest, [layer.digest for layer in manifest.layers]
        )

    return labels_of


class Puller:
    def __init__(
        self,
        content: ContentStore,
        images: ImageStore,
        leases: LeaseStore,
        unpacker: Unpacker,
        default_snapshotter: str,
        gc: Collector,
        hosts: Callable[[], HostsConfig],
    ) -> None:
        self._content = content
        self._images = images
        self._leases = leases
        self._unpacker = unpacker
        self._default_snapshotter = default_snapshotter
        self._gc = gc
        self._hosts = hosts
        # One registry client per configuration, across pulls: its connections and tokens.
        self._clients = ClientPool()
        self._downloads = SingleFlight()
        self._small_fetches = SingleFlight()
        self._download_slots = asyncio.Semaphore(_CONCURRENT_DOWNLOADS)
        self._live: dict[tuple[str, str], LiveBlob] = {}
        # Reference -> the root digest it resolved to last (`_resolve`), oldest first.
        self._roots: dict[str, str] = {}
        # The signature policy (set by the local Transfer service); raising refuses the pull.
        self.admit: Admit | None = None

    async def pull(self, namespace: str, request: PullRequest, progress: Progress) -> Pulled:
        """Pull (and unpack) `request.reference`."""
        ref = reference.parse(request.reference)
        snapshotter = request.snapshotter or self._default_snapshotter
        if request.unpack:
            self._unpacker.snapshotter(snapshotter)  # InvalidArgument if not loaded
        lease = f"pull-{time.time_ns()}-{secrets.token_hex(3)}"
        # The lease (a transaction) is made while the reference resolves (a request).
        lease_made = asyncio.ensure_future(
            self._leases.create(namespace, lease, gc_labels.expire_after(LEASE_LIFETIME))
        )
        started = time.monotonic()
        result: Pulled | None = None
        try:
            async with self._clients.client(self._hosts_for(ref, request)) as client:
                host = ref.host
                job = _Job(
                    namespace,
                    lease,
                    ref,
                    client,
                    progress,
                    (gc_labels.source_key(host), ref.repository),
                    lease_made,
                )
                result = await self._pull(job, request, snapshotter)
        finally:
            try:
                await lease_made
            except Exception:
                pass  # never made: the pull failed with it (or before needing it)
            else:
                with contextlib.suppress(NotFound):
                    await self._leases.delete(namespace, lease)
            # A new record references all its lease held (containerd's pull does not collect
            # either): only a failed pull's leftovers or a record's old target are garbage.
            if result is None or not result.created:
                self._gc.schedule()
        log.info(
            "pulled",
            reference=str(ref),
            digest=result.image.target.digest,
            seconds=round(time.monotonic() - started, 3),
        )
        return result

    def _hosts_for(self, ref: reference.Reference, request: PullRequest) -> HostsConfig:
        hosts = request.hosts if request.hosts is not None else self._hosts()
        return hosts.for_request(ref.host, request.plain_http, request.username, request.secret)

    async def _resolve(self, job: _Job) -> tuple[Descriptor, bytes | None]:
        """The root's descriptor, and its bytes when they came with it.

        A root this store is likely to have (the reference's digest, or what the tag resolved
        to last, is present) is asked with a HEAD, as containerd's resolver does: nothing to
        download when it is still that. Otherwise one GET both resolves and fetches it, where
        a HEAD would be followed by a GET of the same manifest."""
        key = str(job.ref)
        likely = job.ref.digest or self._roots.get(key)
        if likely is not None and self._content.local.size(likely) is not None:
            _, root = await job.client.resolve(job.ref)
            body = None
        else:
            root, body = await job.client.resolve_and_fetch(job.ref)
        self._roots.pop(key, None)
        self._roots[key] = root.digest
        if len(self._roots) > _ROOTS_KEPT:
            del self._roots[next(iter(self._roots))]
        return root, body

    async def _pull(self, job: _Job, request: PullRequest, snapshotter: str) -> Pulled:
        root, body = await self._resolve(job)
        await job.lease_made
        job.progress.add(root)
        if root.media_type in imagespec.INDEXES:
            data = await self._fetch_small(job, root, "index", fetched=body)
        else:
            data = await self._fetch_small(
                job, root, "manifest", _manifest_labels(root), fetched=body
            )
        if self.admit is not None:
            # Before layers are fetched or a record made: a refused image costs its root only,
            # which stays under this pull's lease for the collector.
            await self.admit(job.namespace, job.ref, root, data, job.client)
        if root.media_type in imagespec.INDEXES:
            manifests = await self._children(job, root, data, request)
        else:
            manifests = [(root, data, True)]  # a lone manifest is unpacked whatever its platform
        chosen: PlatformImage | None = None
        try:
            async with asyncio.TaskGroup() as tasks:
                for desc, body, unpack in manifests:
                    read = await self._manifest(
                        job, tasks, desc, body, snapshotter, request.unpack and unpack
                    )
                    if unpack:
                        chosen = read
        except BaseExceptionGroup as group:
            raise first_error(group) from None

        image = Image(name=str(job.ref), target=root, labels=dict(request.labels))
        try:
            return Pulled(await self._images.create(job.namespace, image), True, chosen)
        except AlreadyExists:
            paths = ["target", *(f"labels.{k}" for k in request.labels)]
            updated = await self._images.update(job.namespace, image, paths)
            return Pulled(updated, False, chosen)

    async def _manifest(
        self,
        job: _Job,
        tasks: asyncio.TaskGroup,
        desc: Descriptor,
        body: bytes,
        snapshotter: str,
        unpack: bool,
    ) -> PlatformImage:
        """Its config (the manifest was labelled as it was stored); start its downloads (and
        unpack). Returns the manifest and config read."""
        manifest = imagespec.parse_manifest(body, desc.digest)
        job.progress.add(manifest.config)
        for layer in manifest.layers:
            job.progress.add(layer)
        for layer in manifest.layers:
            if layer.media_type not in imagespec.LAYERS:
                raise InvalidArgument(
                    f"layer {layer.digest}: unsupported media type {layer.media_type!r}"
                )
        stored_labels = self._snapshot_label(job, snapshotter) if unpack else None
        config_bytes = await self._fetch_small(
            job, manifest.config, "config", stored_labels=stored_labels
        )
        config = imagespec.parse_config(config_bytes, manifest.config.digest)
        check_layers(desc, manifest, config)
        downloads = {
            layer.digest: tasks.create_task(self._fetch_layer(job, layer))
            for layer in manifest.layers
        }
        if unpack:
            tasks.create_task(self._unpack(job, snapshotter, manifest, config, downloads))
        return PlatformImage(desc, manifest, config, config_bytes)

    def _snapshot_label(
        self, job: _Job, snapshotter: str
    ) -> Callable[[Descriptor, bytes], dict[str, str]]:
        """A config's label for its top snapshot, set as the config is stored when that
        snapshot is known to exist already (its layers unpacked before: the unpack will find
        them and make nothing), so `_unpack` need not label it in a transaction of its own."""
        store = self._unpacker.snapshotter(snapshotter)

        def labels_of(desc: Descriptor, data: bytes) -> dict[str, str]:
            chain = imagespec.chain_ids(imagespec.parse_config(data, desc.digest).diff_ids)
            if not chain or not store.known(job.namespace, chain[-1]):
                return {}
            labels = job.snapshot_labels[desc.digest] = gc_labels.snapshot_ref(
                snapshotter, chain[-1]
            )
            return labels

        return labels_of

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
            body = await self._fetch_small(
                job, entry.descriptor, "manifest", _manifest_labels(entry.descriptor)
            )
            result.append((entry.descriptor, body, entry is match))
        return result

    async def _label(self, job: _Job, digest: str, labels: dict[str, str]) -> None:
        """Set `labels` and record the source repository (`_labeller`)."""
        # One transaction, and none that writes when the labels are there already (a pull of
        # an image whose blobs are present).
        await self._content.change_labels(job.namespace, digest, _labeller(job, labels))

    # -- fetching ---------------------------------------------------------------------------

    async def _fetch_small(
        self,
        job: _Job,
        desc: Descriptor,
        kind: str,
        labels_of: Callable[[bytes], dict[str, str]] | None = None,
        *,
        fetched: bytes | None = None,
        stored_labels: Callable[[Descriptor, bytes], dict[str, str]] | None = None,
    ) -> bytes:
        """A manifest, index or config: from the store if there, else fetched (or `fetched`,
        its verified bytes already here) and stored; labelled with `labels_of` its bytes (in
        the transaction that records it, if any), and with `stored_labels` if this pull
        stores it."""
        documents.check_size(desc, kind)
        try:
            info = await self._content.info(job.namespace, desc.digest)  # no file: no query
        except NotFound:
            pass
        else:
            documents.check_record(info, desc, kind)
            await self._hold(job, desc)  # before reading: the collector keeps what is held
            job.progress.update(desc.digest, offset=desc.size, state="exists")
            path = self._content.local.path(desc.digest)
            data = await asyncio.to_thread(documents.read_verified, path, desc, kind)
            if labels_of is not None:
                await self._label(job, desc.digest, labels_of(data))
            return data
        job.progress.update(desc.digest, state="downloading")
        # Concurrent pulls of one image share the fetch (a second writer of the same ref would
        # be refused as locked). The one that stores it records it under its own lease.
        stored: list[bool] = []

        def fetch() -> Awaitable[bytes]:
            stored.append(True)
            return self._fetch_and_store(job, desc, kind, labels_of, fetched, stored_labels)

        data = await self._small_fetches.run((job.namespace, desc.digest), fetch)
        if not stored:
            await self._hold(job, desc)
            if labels_of is not None:
                await self._label(job, desc.digest, labels_of(data))
        job.progress.update(desc.digest, offset=desc.size, state="downloaded")
        return data

    async def _fetch_and_store(
        self,
        job: _Job,
        desc: Descriptor,
        kind: str,
        labels_of: Callable[[bytes], dict[str, str]] | None,
        fetched: bytes | None = None,
        stored_labels: Callable[[Descriptor, bytes], dict[str, str]] | None = None,
    ) -> bytes:
        if fetched is not None:
            data = fetched
        elif kind == "config":
            chunks = [c async for c in job.client.fetch_blob(job.ref, desc)]
            data = b"".join(chunks)
        else:
            data = await job.client.fetch_manifest(job.ref, desc)
        job.progress.fetched += len(data)
        extra = labels_of(data) if labels_of is not None else {}
        if stored_labels is not None:
            extra.update(stored_labels(desc, data))
        await self._store(job, f"{kind}-{desc.digest}", desc, data, extra)
        return data

    async def _store(
        self, job: _Job, ref: str, desc: Descriptor, data: bytes, extra: dict[str, str]
    ) -> None:
        labels = {**extra, job.source_label[0]: job.source_label[1]}
        if desc.digest.startswith("sha256:"):  # the store's own algorithm: no ingest needed
            # This namespace may have it already: then the same transaction labels it.
            change = _labeller(job, extra)
            await self._content.put(job.namespace, desc.digest, data, labels, job.lease, change)
            return
        try:
            writer = await self._content.writer(
                job.namespace, ref, desc.size, desc.digest, job.lease
            )
        except AlreadyExists:
            await self._label(job, desc.digest, extra)  # adopted from another namespace
            return
        try:
            await writer.write(0, data, desc.size)
            await writer.commit(desc.size, desc.digest, labels)
        except AlreadyExists:
            await self._label(job, desc.digest, extra)
        finally:
            writer.close()

    async def _fetch_layer(self, job: _Job, desc: Descriptor) -> None:
        # The download records the blob under its pull's lease (written or adopted); a pull
        # that waited for another's holds it in its own lease too.
        downloaded: list[bool] = []

        def download() -> Awaitable[None]:
            downloaded.append(True)
            return self._download(job, desc)

        await self._downloads.run((job.namespace, desc.digest), download)
        if not downloaded:
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
        # Present already (an image sharing it, one pulled before): recorded, held and
        # labelled in one transaction.
        if self._content.local.size(desc.digest) is not None and await self._content.adopt(
            job.namespace, desc.digest, labels, job.lease, _labeller(job, {})
        ):
            progress.update(desc.digest, offset=desc.size, state="exists")
            return
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
                # The socket yields ~64 KiB at a time; the ingest gets 1 MiB writes, each a
                # thread hop, and progress counts only what was written. The ingest hashes
                # the bytes (in its thread) and its commit checks the digest: the client does
                # not hash them a second time on the event loop.
                pending: list[bytes] = []
                size = 0
                async with contextlib.aclosing(
                    job.client.fetch_blob(job.ref, desc, offset=offset, check_digest=False)
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
            try:
                await writer.commit(desc.size, desc.digest, labels)
            except AlreadyExists:
                pass
            except FailedPrecondition as e:  # the size was checked while downloading
                raise DataLoss(f"blob {desc.digest}: digest mismatch ({e})") from None
            progress.update(desc.digest, state="downloaded")
        except BaseException as e:
            # Keep a partial ingest to resume from, unless it holds nothing or bytes that lied.
            keep = not isinstance(e, DataLoss) and writer.status().offset > 0
            error = e
            raise
        finally:
            del self._live[key]
            writer.close()
            # The unpack's reader learns of the end last: told first, it fails its task,
            # whose task group would cancel this one in the abort below, losing both the
            # abort and this download's own error (the one the client must see).
            try:
                if not keep:
                    with contextlib.suppress(NotFound, Unavailable):
                        await self._content.abort(job.namespace, ref)
            finally:
                live.finish(error)

    # -- unpacking --------------------------------------------------------------------------

    async def _unpack(
        self,
        job: _Job,
        snapshotter: str,
        manifest: imagespec.Manifest,
        config: imagespec.ImageConfig,
        downloads: dict[str, asyncio.Future[None]],
    ) -> None:
        chain = await self._unpacker.unpack(
            job.namespace,
            job.lease,
            snapshotter,
            manifest,
            config,
            downloads,
            functools.partial(self._layer_reader, job),
            lambda digest, state: job.progress.update(digest, state=state),
        )
        labelled = job.snapshot_labels.get(manifest.config.digest, {})
        if chain and labelled != gc_labels.snapshot_ref(snapshotter, chain[-1]):
            await self._label(
                job, manifest.config.digest, gc_labels.snapshot_ref(snapshotter, chain[-1])
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
