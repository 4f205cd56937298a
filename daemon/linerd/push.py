"""Pushing an image of the store to a registry: layers and configs, then manifests, then the root.

What goes up is the image's tree as stored, byte for byte (so every digest, the root's too, is
the same at the registry): the target (manifest or index), for an index its manifests, and each
manifest's config and layers. Non-distributable ("foreign") layers are not pushed, as
containerd does not: registries are not meant to hold them.

An index: with no platforms asked for, every manifest it lists goes up, and all of them must be
in the content store (a host-platform pull has only one: pull with all platforms first). With
platforms, only the matching manifests go up (each must be there), and the index itself
unchanged: a registry that checks an index's children (distribution does) then refuses it
unless the other children are in the repository already. Missing content is found before
anything is sent (FailedPrecondition).

For each blob: HEAD (there: "exists"), else a cross-repository mount when its
``containerd.io/distribution.source.<host>`` label names another repository of this registry
host ("mounted"), else an upload ("done"). Manifests go up after their blobs, an index after its
manifests. A child manifest already there (HEAD by digest) is not sent again; the root always
is, since that is what sets the tag.

The push holds a lease on every blob it reads, so the garbage collector keeps them even if the
image is deleted meanwhile. Nothing else is written locally.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import timedelta

import structlog

from liner_common.platforms import select
from linerd import imagespec
from linerd.asyncutil import first_error
from linerd.content import documents
from linerd.content.store import ContentStore
from linerd.core.types import Descriptor, Image, LeaseResource
from linerd.errdefs import FailedPrecondition, InvalidArgument, NotFound
from linerd.gc import labels as gc_labels
from linerd.imagespec import Platform
from linerd.metadata.images import ImageStore
from linerd.metadata.leases import LeaseStore
from linerd.remotes import reference
from linerd.remotes.client import RegistryClient
from linerd.remotes.hosts import HostsConfig
from linerd.remotes.push import RepositoryPusher

log = structlog.get_logger("linerd.push")

LEASE_LIFETIME = timedelta(hours=24)
_CONCURRENT_UPLOADS = 3


@dataclass(slots=True)
class PushRequest:
    reference: str
    image: str = ""  # the image store name; empty: `reference`
    platforms: list[Platform] = field(default_factory=list)
    plain_http: bool = False
    username: str = ""
    secret: str = field(default="", repr=False)
    # The caller's registry configuration instead of the daemon's.
    hosts: HostsConfig | None = None
    # Push this manifest or index of the content store instead of an image's target (a
    # cosign signature manifest: pushed, never admitted to the image store as an image).
    target: Descriptor | None = None


@dataclass(slots=True)
class BlobState:
    descriptor: Descriptor
    offset: int = 0
    state: str = "waiting"


class PushProgress:
    """What a push has done so far, for whoever watches (the Transfer service)."""

    def __init__(self) -> None:
        self.blobs: dict[str, BlobState] = {}
        self.changed = asyncio.Event()
        self.uploaded = 0  # bytes sent over the network

    def add(self, desc: Descriptor) -> None:
        if desc.digest not in self.blobs:
            self.blobs[desc.digest] = BlobState(desc)
            self.changed.set()

    def update(self, digest: str, *, offset: int | None = None, state: str | None = None) -> None:
        blob = self.blobs.get(digest)
        if blob is None:
            return
        if offset is not None:
            blob.offset = offset
        if state is not None:
            blob.state = state
        self.changed.set()


@dataclass(slots=True)
class _Manifest:
    desc: Descriptor
    body: bytes
    blobs: list[Descriptor]  # config, then layers (non-distributable ones left out)


@dataclass(slots=True)
class _Plan:
    root: Descriptor
    root_body: bytes | None  # an index's bytes; None when the root is a manifest
    manifests: list[_Manifest]


class Pusher:
    def __init__(
        self,
        content: ContentStore,
        images: ImageStore,
        leases: LeaseStore,
        hosts: Callable[[], HostsConfig],
    ) -> None:
        self._content = content
        self._images = images
        self._leases = leases
        self._hosts = hosts
        self._slots = asyncio.Semaphore(_CONCURRENT_UPLOADS)
        # Tests and tuning: blobs up to `monolithic_max` go up in one PUT, others in chunks.
        self.monolithic_max: int | None = None
        self.chunk_size: int | None = None

    async def push(
        self, namespace: str, request: PushRequest, progress: PushProgress
    ) -> tuple[str, Descriptor]:
        """Push the image; returns (the reference pushed, the descriptor it names)."""
        ref = reference.parse(request.reference)
        if request.target is not None:
            image = Image(name=f"the manifest {request.target.digest}", target=request.target)
            await self._content.info(namespace, request.target.digest)  # NotFound if absent
        else:
            image = await self._image(namespace, request.image or request.reference)
        target = image.target
        if ref.digest is not None and ref.digest != target.digest:
            raise InvalidArgument(
                f"{ref}: the digest is not the image's ({image.name} is {target.digest})"
            )
        lease = f"push-{time.time_ns()}-{secrets.token_hex(3)}"
        await self._leases.create(namespace, lease, gc_labels.expire_after(LEASE_LIFETIME))
        started = time.monotonic()
        try:
            await self._lease(namespace, lease, target)
            plan = await self._plan(namespace, lease, target, request.platforms)
            for desc in self._all(plan):
                progress.add(desc)
            async with RegistryClient(self._hosts_for(ref, request)) as client:
                kwargs = {}
                if self.monolithic_max is not None:
                    kwargs["monolithic_max"] = self.monolithic_max
                if self.chunk_size is not None:
                    kwargs["chunk_size"] = self.chunk_size
                remote = RepositoryPusher(client, ref, **kwargs)
                await self._push(namespace, ref, remote, plan, progress)
        finally:
            with contextlib.suppress(NotFound):
                await self._leases.delete(namespace, lease)
        log.info(
            "pushed",
            reference=str(ref),
            image=image.name,
            digest=target.digest,
            uploaded=progress.uploaded,
            seconds=round(time.monotonic() - started, 3),
        )
        return str(ref), target

    async def _image(self, namespace: str, name: str) -> Image:
        try:
            return await self._images.get(namespace, name)
        except NotFound:
            with contextlib.suppress(InvalidArgument):
                normalized = reference.normalize(name)
                if normalized != name:
                    return await self._images.get(namespace, normalized)
            raise NotFound(f"image {name!r} not found") from None

    def _hosts_for(self, ref: reference.Reference, request: PushRequest) -> HostsConfig:
        hosts = request.hosts if request.hosts is not None else self._hosts()
        return hosts.for_request(ref.host, request.plain_http, request.username, request.secret)

    async def _lease(self, namespace: str, lease: str, desc: Descriptor) -> None:
        with contextlib.suppress(NotFound):  # reported when read
            await self._leases.add_resource(namespace, lease, LeaseResource(desc.digest, "content"))

    # -- planning: everything local, before anything is sent --------------------------------

    async def _plan(
        self, namespace: str, lease: str, root: Descriptor, platforms: list[Platform]
    ) -> _Plan:
        if root.media_type in imagespec.INDEXES:
            body = await self._read_small(namespace, root, "index")
            entries = imagespec.index_manifests(body, root.digest)
            if platforms:
                entries = select(entries, imagespec.entry_platform, platforms)
                if not entries:
                    raise NotFound(
                        f"index {root.digest} has no manifest for {', '.join(map(str, platforms))}"
                    )
            manifests = []
            for entry in entries:
                await self._lease(namespace, lease, entry.descriptor)
                try:
                    manifests.append(await self._manifest(namespace, lease, entry.descriptor))
                except FailedPrecondition as e:
                    where = f" ({entry.platform})" if entry.platform else ""
                    hint = (
                        ""
                        if platforms
                        else " (pull all platforms, or push only the platforms that are here)"
                    )
                    raise FailedPrecondition(
                        f"index {root.digest}: manifest{where}: {e}{hint}"
                    ) from None
            return _Plan(root, body, manifests)
        if root.media_type in imagespec.MANIFESTS:
            return _Plan(root, None, [await self._manifest(namespace, lease, root)])
        raise InvalidArgument(f"cannot push an image whose target is {root.media_type!r}")

    async def _manifest(self, namespace: str, lease: str, desc: Descriptor) -> _Manifest:
        body = await self._read_small(namespace, desc, "manifest")
        manifest = imagespec.parse_manifest(body, desc.digest)
        blobs = [manifest.config] + [
            layer for layer in manifest.layers if not _non_distributable(layer)
        ]
        for blob in blobs:
            await self._lease(namespace, lease, blob)
            try:
                info = await self._content.info(namespace, blob.digest)
            except NotFound:
                raise FailedPrecondition(
                    f"{desc.digest}: blob {blob.digest} is not in the content store"
                ) from None
            if info.size != blob.size:
                raise FailedPrecondition(
                    f"{desc.digest}: blob {blob.digest} is {info.size} bytes, "
                    f"the manifest says {blob.size}"
                )
        return _Manifest(desc, body, blobs)

    async def _read_small(self, namespace: str, desc: Descriptor, kind: str) -> bytes:
        try:
            return await documents.read_document(self._content, namespace, desc, kind)
        except NotFound as e:  # for a push, missing content is a precondition unmet
            raise FailedPrecondition(str(e)) from None

    @staticmethod
    def _all(plan: _Plan) -> list[Descriptor]:
        out: list[Descriptor] = []
        for m in plan.manifests:
            out.extend(m.blobs)
            out.append(m.desc)
        if plan.root_body is not None:
            out.append(plan.root)
        return out

    # -- sending ----------------------------------------------------------------------------

    async def _push(
        self,
        namespace: str,
        ref: reference.Reference,
        remote: RepositoryPusher,
        plan: _Plan,
        progress: PushProgress,
    ) -> None:
        unique: dict[str, Descriptor] = {}
        for m in plan.manifests:
            for blob in m.blobs:
                unique.setdefault(blob.digest, blob)
        label = gc_labels.source_key(ref.host)
        try:
            async with asyncio.TaskGroup() as tasks:
                for blob in unique.values():
                    tasks.create_task(self._blob(namespace, remote, blob, label, progress))
        except BaseExceptionGroup as group:
            raise first_error(group) from None
        tag = None if ref.digest is not None and not ref.tag else ref.tag
        for m in plan.manifests:
            is_root = plan.root_body is None
            if not is_root and await remote.manifest_exists(m.desc):
                progress.update(m.desc.digest, offset=m.desc.size, state="exists")
                continue
            progress.update(m.desc.digest, state="uploading")
            await remote.put_manifest(m.desc, m.body, tag if is_root else None)
            progress.uploaded += m.desc.size
            progress.update(m.desc.digest, offset=m.desc.size, state="done")
        if plan.root_body is not None:
            progress.update(plan.root.digest, state="uploading")
            await remote.put_manifest(plan.root, plan.root_body, tag)
            progress.uploaded += plan.root.size
            progress.update(plan.root.digest, offset=plan.root.size, state="done")

    async def _blob(
        self,
        namespace: str,
        remote: RepositoryPusher,
        desc: Descriptor,
        label: str,
        progress: PushProgress,
    ) -> None:
        async with self._slots:
            if await remote.blob_exists(desc):
                progress.update(desc.digest, offset=desc.size, state="exists")
                return
            info = await self._content.info(namespace, desc.digest)
            sources = [r.strip() for r in info.labels.get(label, "").split(",") if r.strip()]
            progress.update(desc.digest, offset=0, state="uploading")
            sent = 0

            def report(offset: int) -> None:
                nonlocal sent
                progress.uploaded += max(offset - sent, 0)
                sent = offset
                progress.update(desc.digest, offset=offset)

            async def source(offset: int, length: int) -> AsyncIterator[bytes]:
                async for chunk in await self._content.read(namespace, desc.digest, offset, length):
                    yield chunk

            how = await remote.upload_blob(desc, source, mount_from=sources, on_progress=report)
            progress.update(
                desc.digest, offset=desc.size, state="mounted" if how == "mounted" else "done"
            )


def _non_distributable(desc: Descriptor) -> bool:
    return "nondistributable" in desc.media_type or ".foreign." in desc.media_type
