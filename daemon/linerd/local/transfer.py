"""The local Transfer service: pulls, pushes, imports and exports, for every caller.

The liner Transfer API, the CLI through it, and the CRI's PullImage (namespace `k8s.io`, its
own credentials) all call here, and all get the same: the image events a new or changed
image publishes (`/images/create`, `/images/update`), the pull metrics, a lease for the
work (each operation holds its own until it ends), the GC scheduled after it (a pull: unless
it made a new record, which references all its lease held), and the
signature policy (`linerd.local.policy`): a pull is judged once its root manifest or index is
fetched, with the pull's own registry client reading signatures, before any layer is fetched
or any record made; an import's images before anything is unpacked or recorded.

The machinery (the unpacker, `Puller`, `Pusher`, `Archives`) is built here and only here,
each on first use: pulls, pushes and archives load the registry client (its HTTP client
and h11, ~1 MB) and the layer decompressors, which a daemon never asked for them never
loads. `build` makes this service and the local Diff service, which shares the unpacker.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from liner_api.containerd.events import image_pb2 as image_events
from liner_common.platforms import Platform
from linerd.content.store import ContentStore
from linerd.core.types import Descriptor, Image
from linerd.events import Exchange
from linerd.gc.collector import Collector
from linerd.local.diff import LocalDiff
from linerd.local.events import Publisher
from linerd.local.policy import PolicyGate, RegistryArtifacts
from linerd.metadata.images import ImageStore
from linerd.metadata.leases import LeaseStore
from linerd.remotes.hosts import HostsConfig
from linerd.snapshots.store import SnapshotStore

if TYPE_CHECKING:  # imported where built: they load the registry client and decompressors
    from linerd.archive import Archives
    from linerd.content.documents import PlatformImage
    from linerd.metrics import Metrics
    from linerd.pull import Progress, Puller
    from linerd.push import Pusher, PushProgress
    from linerd.remotes.client import RegistryClient
    from linerd.remotes.reference import Reference
    from linerd.unpack import Unpacker


@dataclass(frozen=True, slots=True)
class PullResult:
    image: Image
    created: bool  # False: an image of that name existed and now points here
    fetched: int  # bytes that came over the network
    # The manifest chosen for the pull's platforms and its config, as the pull read them
    # (None if it chose none): what a caller would read back from the store.
    platform_image: PlatformImage | None = None


@dataclass(frozen=True, slots=True)
class PushResult:
    reference: str  # what was pushed, normalized
    target: Descriptor  # the manifest or index the reference names now


@dataclass(frozen=True, slots=True)
class ImportedImage:
    image: Image
    created: bool


class LocalTransfer:
    def __init__(
        self,
        content: ContentStore,
        images: ImageStore,
        leases: LeaseStore,
        snapshots: Mapping[str, SnapshotStore],
        default_snapshotter: str,
        gc: Collector,
        exchange: Exchange,
        metrics: Metrics,
        hosts: Callable[[], HostsConfig],
        scratch: Path,
        snapshots_root: Path,
        policy: PolicyGate | None = None,
    ) -> None:
        self._content = content
        self._images = images
        self._leases = leases
        self._snapshots = snapshots
        self.default_snapshotter = default_snapshotter
        self._gc = gc
        self._publisher = Publisher(exchange)
        self._metrics = metrics
        self._hosts = hosts
        self._scratch = scratch
        self._snapshots_root = snapshots_root
        self._policy = policy
        self._unpacker: Unpacker | None = None
        self._puller: Puller | None = None
        self._pusher: Pusher | None = None
        self._archives: Archives | None = None

    # -- the machinery, built once on first use -----------------------------------------------

    def unpacker(self) -> Unpacker:
        if self._unpacker is None:
            from linerd.unpack import Unpacker

            unpacker = Unpacker(self._content, self._snapshots, self._snapshots_root, self._scratch)
            unpacker.on_unpack = self._metrics.unpack_seconds.observe
            self._unpacker = unpacker
        return self._unpacker

    def puller(self) -> Puller:
        if self._puller is None:
            from linerd.pull import Puller

            puller = Puller(
                self._content,
                self._images,
                self._leases,
                self.unpacker(),
                self.default_snapshotter,
                self._gc,
                self._hosts,
            )
            if self._policy is not None:
                puller.admit = self._admit
            self._puller = puller
        return self._puller

    async def _admit(
        self,
        namespace: str,
        ref: Reference,
        root: Descriptor,
        data: bytes,
        client: RegistryClient,
    ) -> None:
        assert self._policy is not None
        await self._policy.admit(
            namespace, ref, root, via="pull", artifacts=RegistryArtifacts(client), manifest=data
        )

    def pusher(self) -> Pusher:
        if self._pusher is None:
            from linerd.push import Pusher

            self._pusher = Pusher(self._content, self._images, self._leases, self._hosts)
        return self._pusher

    def archives(self) -> Archives:
        if self._archives is None:
            from linerd.archive import Archives

            archives = Archives(
                self._content,
                self._images,
                self._leases,
                self._gc,
                self.unpacker(),
                self.default_snapshotter,
            )
            if self._policy is not None:
                policy = self._policy

                async def admit(namespace: str, image: Image) -> None:
                    await policy.admit(namespace, image.name, image.target, via="import")

                archives.admit = admit
            self._archives = archives
        return self._archives

    # -- operations ---------------------------------------------------------------------------

    async def pull(
        self,
        namespace: str,
        reference: str,
        *,
        platforms: Sequence[Platform] = (),
        all_platforms: bool = False,
        snapshotter: str = "",
        unpack: bool = True,
        plain_http: bool = False,
        username: str = "",
        secret: str = "",
        hosts: HostsConfig | None = None,
        progress: Progress | None = None,
        labels: dict[str, str] | None = None,
    ) -> PullResult:
        """Pull `reference` into `namespace` (and unpack it for `platforms`, default this
        machine's, into `snapshotter`, default the daemon's). `hosts` replaces the daemon's
        registry configuration for this pull; `progress`, if given, is kept up to date;
        `labels` are set on the image record the pull makes."""
        from linerd.pull import Progress, PullRequest

        request = PullRequest(
            reference=reference,
            platforms=[p.normalized() for p in platforms],
            all_platforms=all_platforms,
            snapshotter=snapshotter,
            unpack=unpack,
            plain_http=plain_http,
            username=username,
            secret=secret,
            hosts=hosts,
            labels=dict(labels or {}),
        )
        progress = progress if progress is not None else Progress()
        started = time.monotonic()
        try:
            pulled = await self.puller().pull(namespace, request, progress)
        except BaseException:  # a client gone away too: the pull did not happen
            self._metrics.observe_pull(False, 0, time.monotonic() - started)
            raise
        self._metrics.observe_pull(True, progress.fetched, time.monotonic() - started)
        self._published(namespace, pulled.image, pulled.created)
        return PullResult(pulled.image, pulled.created, progress.fetched, pulled.platform_image)

    async def push(
        self,
        namespace: str,
        reference: str,
        *,
        image: str = "",
        platforms: Sequence[Platform] = (),
        plain_http: bool = False,
        username: str = "",
        secret: str = "",
        hosts: HostsConfig | None = None,
        progress: PushProgress | None = None,
        target: Descriptor | None = None,
    ) -> PushResult:
        """Push the image `image` (default: the one named `reference`) to `reference`: every
        platform its index lists, or only `platforms`. `target`: push that manifest of the
        content store instead (no image record involved)."""
        from linerd.push import PushProgress, PushRequest

        request = PushRequest(
            reference=reference,
            image=image,
            platforms=[p.normalized() for p in platforms],
            plain_http=plain_http,
            username=username,
            secret=secret,
            hosts=hosts,
            target=target,
        )
        progress = progress if progress is not None else PushProgress()
        name, target = await self.pusher().push(namespace, request, progress)
        return PushResult(name, target)

    async def export(
        self,
        namespace: str,
        names: Sequence[str],
        *,
        platforms: Sequence[Platform] = (),
        all_platforms: bool = False,
        docker_manifest: bool = False,
    ) -> AsyncIterator[bytes]:
        """The images as an OCI layout tar, in chunks; what is missing is reported before the
        first chunk."""
        from linerd.archive import ExportRequest

        request = ExportRequest(
            names=list(names),
            platforms=[p.normalized() for p in platforms],
            all_platforms=all_platforms,
            docker_manifest=docker_manifest,
        )
        return await self.archives().export(namespace, request)

    async def import_(
        self,
        namespace: str,
        chunks: AsyncIterator[bytes],
        *,
        snapshotter: str = "",
        skip_unpack: bool = False,
        base_name: str = "",
        all_platforms: bool = False,
    ) -> list[ImportedImage]:
        """Import the archive (an OCI layout or a Docker archive) streamed as `chunks`."""
        from linerd.archive import ImportOptions

        options = ImportOptions(
            snapshotter=snapshotter,
            skip_unpack=skip_unpack,
            base_name=base_name,
            all_platforms=all_platforms,
        )
        imported = await self.archives().import_(namespace, options, chunks)
        for image, created in imported:
            self._published(namespace, image, created)
        return [ImportedImage(image, created) for image, created in imported]

    def _published(self, namespace: str, image: Image, created: bool) -> None:
        if created:
            event = image_events.ImageCreate(name=image.name, labels=image.labels)
            self._publisher.publish(namespace, "/images/create", event)
        else:
            update = image_events.ImageUpdate(name=image.name, labels=image.labels)
            self._publisher.publish(namespace, "/images/update", update)


def build(
    content: ContentStore,
    images: ImageStore,
    leases: LeaseStore,
    snapshots: Mapping[str, SnapshotStore],
    default_snapshotter: str,
    gc: Collector,
    exchange: Exchange,
    metrics: Metrics,
    hosts: Callable[[], HostsConfig],
    scratch: Path,
    snapshots_root: Path,
    policy: PolicyGate | None = None,
) -> tuple[LocalTransfer, LocalDiff]:
    """The local Transfer and Diff services over the stores: one unpacker between them, and
    nothing of the pull machinery imported until a call needs it. `scratch` is where mounts
    are mounted to be written through; `snapshots_root` holds the snapshotters' roots."""
    transfer = LocalTransfer(
        content,
        images,
        leases,
        snapshots,
        default_snapshotter,
        gc,
        exchange,
        metrics,
        hosts,
        scratch,
        snapshots_root,
        policy,
    )
    return transfer, LocalDiff(content, transfer.unpacker, scratch)
