"""The CRI's `images` group: ListImages, ImageStatus, PullImage, RemoveImage, ImageFsInfo.

A CRI image is not a record of its own: it is every image record of namespace `k8s.io`
whose target resolves (for this machine's platform) to the same image config, and its id is
that config's digest, as in containerd's CRI image store. A record is a *reference*; the
CRI shows the tagged ones as `repo_tags`, the digested ones as `repo_digests`, and skips the
`sha256:<config>` id record. So an image pulled with `ctr -n k8s.io images pull` (one tag
record) is a CRI image at once, and `ctr -n k8s.io images ls` lists what the CRI pulled.

PullImage pulls through the local Transfer service, like every pull (the daemon's registry
hosts: mirrors, TLS, credentials), with the request's AuthConfig as this pull's credentials
only, then records what containerd's CRI records: the reference pulled (`name:tag`, or
`name@digest` when a digest was given), `name@<digest of what the tag resolved to>`, and
`sha256:<config digest>`, each labelled `io.cri-containerd.image=managed` (the sandbox image
also `io.cri-containerd.pinned=pinned`). RemoveImage deletes every reference of the image,
the last with a synchronous garbage collection.

What a record resolves to (config digest, chain ID, size, config) depends only on its target
digest, so it is kept per target digest (only for targets some record still names).
The sandboxes and containers groups use `lookup` (an image by any name, or None) and
`ensure` (the sandbox image, pulled when absent).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import functools
import json
import os
import re
import time
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from liner_api.runtime.v1 import api_pb2
from linerd import imagespec
from linerd.content.documents import PlatformImage, read_image
from linerd.core.types import Descriptor, Image
from linerd.cri import NAMESPACE
from linerd.errdefs import InvalidArgument, LinerError, NotFound
from linerd.remotes import reference
from linerd.remotes.hosts import Credentials, HostsConfig

if TYPE_CHECKING:
    from linerd.content.store import ContentStore
    from linerd.local.images import Images
    from linerd.local.transfer import LocalTransfer
    from linerd.snapshots.store import SnapshotStore

log = structlog.get_logger("linerd.cri.images")

# containerd's CRI labels on the image records it makes.
IMAGE_LABEL = "io.cri-containerd.image"
IMAGE_LABEL_VALUE = "managed"
PINNED_LABEL = "io.cri-containerd.pinned"
PINNED_LABEL_VALUE = "pinned"

_IMAGE_ID = re.compile(r"^sha256:[a-f0-9]{64}$")
_ID_PREFIX = re.compile(r"^(?:sha256:)?([a-f0-9]{1,64})$")


# ---- pure conversions ------------------------------------------------------------------------


def user_of(config_user: str) -> tuple[int | None, str]:
    """(uid, username) from an image config's User, as containerd reads it: the part before
    `:` (a group is dropped); a number is a uid, anything else a user name."""
    user = config_user.split(":", 1)[0]
    if not user:
        return None, ""
    try:
        return int(user, 10), ""
    except ValueError:
        return None, user


def pull_reference(image: str) -> reference.Reference:
    """The reference PullImage pulls and records: normalized, and with a digest the tag is
    dropped (`name:tag@digest` is `name@digest`), as containerd's ParseDockerRef does."""
    ref = reference.parse(image)
    if ref.digest:
        return reference.Reference(ref.host, ref.repository, None, ref.digest)
    return ref


@functools.lru_cache(maxsize=1024)
def _normalized(name: str) -> str:
    """`name` as PullImage records it ("" if it is no reference); kubelet asks by the same
    few names every time."""
    try:
        return str(pull_reference(name))
    except InvalidArgument:
        return ""


def split_references(names: Iterable[str]) -> tuple[list[str], list[str]]:
    """(repo_tags, repo_digests) of a CRI image from the names of its records, each sorted:
    tagged names are tags, digested names digests; the id name and names that are not
    references (ctr accepts any name) are neither."""
    tags: list[str] = []
    digests: list[str] = []
    for name in names:
        if _IMAGE_ID.match(name):
            continue
        try:
            ref = reference.parse(name)
        except InvalidArgument:
            continue
        if str(ref) != name:
            continue  # not in normalized form: not a name containerd's CRI would list
        if ref.digest:
            digests.append(name)
        elif ref.tag:
            tags.append(name)
    return sorted(tags), sorted(digests)


@dataclass(frozen=True, slots=True)
class Resolved:
    """What a record's target resolves to on this machine's platform."""

    config: Descriptor
    chain_id: str
    size: int  # the target, the manifest, the config and the layers, compressed
    spec: dict[str, Any] = field(repr=False)  # the image config document, parsed


@dataclass(frozen=True, slots=True)
class CriImage:
    """One CRI image: the records (references) resolving to one config."""

    id: str  # the config's digest
    references: tuple[str, ...]  # record names, sorted
    repo_tags: tuple[str, ...]
    repo_digests: tuple[str, ...]
    chain_id: str  # of the unpacked layers: the parent snapshot of a container
    size: int
    spec: dict[str, Any] = field(repr=False)
    target: Descriptor = field(repr=False)  # a record's target (the first reference's)
    pinned: bool = False

    @property
    def config(self) -> dict[str, Any]:
        """The config's `config` object (Entrypoint, Cmd, Env, User, WorkingDir, ...)."""
        value = self.spec.get("config")
        return value if isinstance(value, dict) else {}

    @property
    def name(self) -> str:
        """The reference a container of this image records: its first tag, else first digest,
        else the id (containerd's ContainerStatus shows the first tag as `image`)."""
        return next(iter(self.repo_tags or self.repo_digests), self.id)


def group_images(records: Iterable[Image], resolved: dict[str, Resolved]) -> dict[str, CriImage]:
    """The CRI images (by id) of `records`, given what each target digest resolved to
    (records whose target did not resolve are not images here)."""
    by_id: dict[str, list[Image]] = {}
    for record in records:
        r = resolved.get(record.target.digest)
        if r is not None:
            by_id.setdefault(r.config.digest, []).append(record)
    images = {}
    for image_id, members in by_id.items():
        members.sort(key=lambda m: m.name)
        first = resolved[members[0].target.digest]
        names = [m.name for m in members]
        tags, digests = split_references(names)
        images[image_id] = CriImage(
            id=image_id,
            references=tuple(names),
            repo_tags=tuple(tags),
            repo_digests=tuple(digests),
            chain_id=first.chain_id,
            size=first.size,
            spec=first.spec,
            target=members[0].target,
            pinned=any(m.labels.get(PINNED_LABEL) == PINNED_LABEL_VALUE for m in members),
        )
    return images


def to_cri_image(image: CriImage) -> api_pb2.Image:
    """The CRI's Image message: equal whichever name the image was asked by."""
    message = api_pb2.Image(
        id=image.id,
        repo_tags=image.repo_tags,
        repo_digests=image.repo_digests,
        size=image.size,
        pinned=image.pinned,
        spec=api_pb2.ImageSpec(image=image.id),
    )
    user = image.config.get("User")
    uid, username = user_of(user if isinstance(user, str) else "")
    if uid is not None:
        message.uid.value = uid
    message.username = username
    return message


def verbose_info(image: CriImage) -> dict[str, str]:
    """ImageStatus's `info` when verbose: containerd's keys (chain ID and image config)."""
    return {"info": json.dumps({"chainID": image.chain_id, "imageSpec": image.spec})}


def _find(images: dict[str, CriImage], name: str) -> CriImage | None:
    """`CriImages.lookup` among `images`."""
    if not name:
        raise InvalidArgument("no image given")
    if _IMAGE_ID.match(name):
        return images.get(name)
    normalized = _normalized(name)
    if normalized:
        for image in images.values():
            if normalized in image.references:
                return image
    prefix = _ID_PREFIX.match(name)
    if prefix is None:
        return None
    found = [i for i in images.values() if i.id[len("sha256:") :].startswith(prefix[1])]
    if len(found) > 1:
        raise InvalidArgument(f"image id prefix {name!r} is ambiguous")
    return found[0] if found else None


# ---- credentials -----------------------------------------------------------------------------


def auth_credentials(auth: api_pb2.AuthConfig) -> Credentials | None:
    """The credentials an AuthConfig carries (None: anonymous), in containerd's order:
    username and password, identity token, `auth` (base64 of user:password); then a
    registry token (a bearer token used as is), which containerd ignores."""
    if auth.username:
        return Credentials(auth.username, auth.password)
    if auth.identity_token:
        return Credentials(identitytoken=auth.identity_token)
    if auth.auth:
        try:
            decoded = base64.b64decode(auth.auth, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise InvalidArgument("auth: invalid base64 of username:password") from None
        user, sep, password = decoded.partition(":")
        if not sep:
            raise InvalidArgument("auth: not base64 of username:password")
        return Credentials(user, password.strip("\x00"))
    if auth.registry_token:
        return Credentials(registrytoken=auth.registry_token)
    return None


def _server_host(address: str) -> str:
    """host[:port] of an AuthConfig's server_address (`https://host/v1/`, `host`, ...)."""
    if "://" not in address:
        address = "https://" + address
    netloc = urllib.parse.urlsplit(address).netloc
    return "docker.io" if netloc in ("index.docker.io", "registry-1.docker.io") else netloc


def hosts_with_auth(
    base: HostsConfig, host: str, auth: api_pb2.AuthConfig | None
) -> HostsConfig | None:
    """The daemon's hosts configuration with the request's credentials on top, for one pull
    (None: the daemon's as it is). Without a server_address the credentials go to every
    endpoint of the image's registry (mirrors included), as containerd does; with one, to
    that host only. Blocking: it may read a hosts.toml."""
    creds = auth_credentials(auth) if auth is not None else None
    if creds is None:
        return None
    if auth is not None and auth.server_address:
        targets = [_server_host(auth.server_address)]
    else:
        targets = [e.host for e in base.endpoints_for(host)]
        if host == reference.DEFAULT_HOST:
            targets.append(host)
    auths = dict(base.auths)
    for target in targets:
        auths[target] = creds
    return HostsConfig(
        base.registries, auths, config_path=base.config_path, plain_http=base.plain_http
    )


# ---- the group -------------------------------------------------------------------------------


class CriImages:
    """The images group over the local services (namespace `k8s.io`, never another store)."""

    def __init__(
        self,
        images: Images,
        transfer: LocalTransfer,
        content: ContentStore,
        snapshotter: SnapshotStore,
        content_root: Path,
        hosts: Callable[[], HostsConfig],
        sandbox_image: str,
    ) -> None:
        self._images = images
        self._transfer = transfer
        self._content = content
        self._snapshotter = snapshotter
        self._content_root = content_root
        self._hosts = hosts
        self._sandbox_image = str(pull_reference(sandbox_image))
        self._resolved: dict[str, Resolved] = {}
        # (image store generation, every CRI image by id) of the last `all`
        self._all: tuple[int, dict[str, CriImage]] | None = None
        # What ImageStatus and ListImages serialized of one `all` (the dict it returned):
        # ImageStatus (not verbose) by image id, and an unfiltered ListImages under "".
        self._serialized: tuple[dict[str, CriImage], dict[str, bytes]] | None = None

    # -- for the other groups

    async def all(self) -> dict[str, CriImage]:
        """Every CRI image, by id (shared: read only). Kept while the image store's
        generation of `k8s.io` stays (any record created, changed or deleted moves it)."""
        generation = self._images.store.generation(NAMESPACE)  # before the list
        cached = self._all
        if cached is not None and cached[0] == generation:
            return cached[1]
        records = await self._images.list(NAMESPACE)
        targets = {r.target.digest: r.target for r in records}
        for digest in list(self._resolved):
            if digest not in targets:
                del self._resolved[digest]  # no record names it any more
        missing = [t for d, t in targets.items() if d not in self._resolved]
        unresolved = False
        for target in missing:
            resolved = await self._resolve(target)
            if resolved is not None:
                self._resolved[target.digest] = resolved
            else:
                unresolved = True
        images = group_images(records, self._resolved)
        # A target not resolved now (its content missing, say) is tried again next time.
        self._all = None if unresolved else (generation, images)
        return images

    async def lookup(self, name: str) -> CriImage | None:
        """The image `name` means: an id (`sha256:<hex>`), a reference (normalized: `busybox`
        is `docker.io/library/busybox:latest`), or a unique prefix of an id's hex."""
        return _find(await self.all(), name)

    async def ensure(self, name: str, auth: api_pb2.AuthConfig | None = None) -> CriImage:
        """The image `name`, pulled first if absent (the sandbox image, on demand)."""
        image = await self.lookup(name)
        if image is not None:
            return image
        image_id = await self._pull(name, auth)
        images = await self.all()
        if image_id not in images:
            raise NotFound(f"image {name!r} was pulled but is gone again")
        return images[image_id]

    # -- RPCs

    def _kept(self, images: dict[str, CriImage]) -> dict[str, bytes]:
        """The serialized answers kept for `images` (one `all`'s answer), emptied when
        `all` answers another."""
        kept = self._serialized
        if kept is None or kept[0] is not images:
            kept = self._serialized = (images, {})
        return kept[1]

    async def list_images(self, request: api_pb2.ListImagesRequest) -> api_pb2.ListImagesResponse:
        return api_pb2.ListImagesResponse.FromString(await self.list_images_bytes(request))

    async def list_images_bytes(self, request: api_pb2.ListImagesRequest) -> bytes:
        """The ListImagesResponse, serialized; unfiltered, kept while the images are."""
        everything = await self.all()
        wanted = request.filter.image.image if request.HasField("filter") else ""
        kept = self._kept(everything)
        if not wanted and (raw := kept.get("")) is not None:
            return raw
        images = list(everything.values())
        if wanted:
            images = [i for i in images if await self._matches(i, wanted)]
        images.sort(key=lambda i: i.id)
        response = api_pb2.ListImagesResponse(images=[to_cri_image(i) for i in images])
        raw = response.SerializeToString()
        if not wanted:
            kept[""] = raw
        return raw

    async def image_status(
        self, request: api_pb2.ImageStatusRequest
    ) -> api_pb2.ImageStatusResponse:
        return api_pb2.ImageStatusResponse.FromString(await self.image_status_bytes(request))

    async def image_status_bytes(self, request: api_pb2.ImageStatusRequest) -> bytes:
        """The ImageStatusResponse, serialized; not verbose, kept per image while the images
        are (`lookup` answers from the same `all`)."""
        images = await self.all()
        image = _find(images, request.image.image)
        if image is None:
            return b""  # absent is not an error: an empty response
        if request.verbose:
            response = api_pb2.ImageStatusResponse(image=to_cri_image(image))
            response.info.update(verbose_info(image))
            return response.SerializeToString()
        kept = self._kept(images)
        raw = kept.get(image.id)
        if raw is None:
            raw = api_pb2.ImageStatusResponse(image=to_cri_image(image)).SerializeToString()
            kept[image.id] = raw
        return raw

    async def pull_image(self, request: api_pb2.PullImageRequest) -> api_pb2.PullImageResponse:
        auth = request.auth if request.HasField("auth") else None
        return api_pb2.PullImageResponse(image_ref=await self._pull(request.image.image, auth))

    async def remove_image(
        self, request: api_pb2.RemoveImageRequest
    ) -> api_pb2.RemoveImageResponse:
        image = await self.lookup(request.image.image)
        if image is None:
            return api_pb2.RemoveImageResponse()  # idempotent
        last = len(image.references) - 1
        for i, name in enumerate(image.references):
            # NotFound: removed meanwhile by someone else. The last delete collects what only
            # this image held before answering.
            with contextlib.suppress(NotFound):
                await self._images.delete(NAMESPACE, name, sync=i == last)
        return api_pb2.RemoveImageResponse()

    async def image_fs_info(
        self, request: api_pb2.ImageFsInfoRequest
    ) -> api_pb2.ImageFsInfoResponse:
        now = time.time_ns()
        snap_bytes, snap_inodes = await asyncio.to_thread(self._snapshotter.usage_totals_sync)
        blob_bytes, blob_files = await asyncio.to_thread(_directory_usage, self._content_root)
        snapshots = _fs_usage(now, self._snapshotter.root, snap_bytes, snap_inodes)
        content = _fs_usage(now, self._content_root, blob_bytes, blob_files)
        # kubelet reads the first entry of each list: the snapshotter's, where both unpacked
        # images and containers' writable layers live.
        return api_pb2.ImageFsInfoResponse(
            image_filesystems=[snapshots, content], container_filesystems=[snapshots]
        )

    # -- helpers

    async def _matches(self, image: CriImage, wanted: str) -> bool:
        """ListImages' filter: the image `wanted` names, or, when it names a repository
        without a tag or digest, every image with a reference in that repository."""
        try:
            found = await self.lookup(wanted)
        except InvalidArgument:
            return False
        if found is not None and found.id == image.id:
            return True
        last = wanted.rsplit("/", 1)[-1]
        if ":" in last or "@" in last:
            return False
        try:
            repository = reference.parse(wanted).name
        except InvalidArgument:
            return False
        return any(
            reference.parse(r).name == repository for r in image.repo_tags + image.repo_digests
        )

    async def _pull(self, name: str, auth: api_pb2.AuthConfig | None) -> str:
        """Pull `name` and record its references; returns the image id."""
        if not name:
            raise InvalidArgument("no image given")
        ref = pull_reference(name)
        hosts = None  # without credentials: the daemon's, and no hosts.toml to read here
        if auth is not None and auth_credentials(auth) is not None:
            hosts = await asyncio.to_thread(hosts_with_auth, self._hosts(), ref.host, auth)
        labels = {IMAGE_LABEL: IMAGE_LABEL_VALUE}
        if str(ref) == self._sandbox_image:
            labels[PINNED_LABEL] = PINNED_LABEL_VALUE
        # The pull records `ref` itself, with these labels, in the transaction that makes it.
        result = await self._transfer.pull(NAMESPACE, str(ref), hosts=hosts, labels=labels)
        target = result.image.target
        # What a target resolves to depends on its digest only (immutable content); the
        # pull's platform is this machine's, so its manifest and config are what a read of
        # the target would give.
        resolved = self._resolved.get(target.digest)
        if resolved is None and result.platform_image is not None:
            resolved = _resolved_of(target, result.platform_image)
        if resolved is None:
            resolved = await self._resolve(target)
        if resolved is None:
            raise NotFound(f"image {ref}: no image for this platform after the pull")
        self._resolved[target.digest] = resolved
        names = [resolved.config.digest]
        if not ref.digest:
            names.append(f"{ref.name}@{target.digest}")
        # One transaction (with the events `create` and `update` publish).
        await self._images.put(
            NAMESPACE, [Image(name=n, target=target, labels=dict(labels)) for n in names]
        )
        log.info("pulled image", reference=str(ref), image_id=resolved.config.digest)
        return resolved.config.digest

    async def _resolve(self, target: Descriptor) -> Resolved | None:
        """What `target` is on this machine's platform; None if it is not an image here
        (not a manifest or index, no manifest for the platform, content missing)."""
        try:
            return await self._resolve_or_fail(target)
        except LinerError as e:
            log.debug("not a CRI image", target=target.digest, reason=str(e))
            return None

    async def _resolve_or_fail(self, target: Descriptor) -> Resolved | None:
        if target.media_type not in imagespec.INDEXES | imagespec.MANIFESTS:
            return None
        return _resolved_of(target, await read_image(self._content, NAMESPACE, target))


def _resolved_of(target: Descriptor, image: PlatformImage) -> Resolved:
    """What the CRI keeps of `target`, read as `image` (its manifest for this platform)."""
    manifest = image.manifest
    size = target.size + manifest.config.size + sum(layer.size for layer in manifest.layers)
    if image.manifest_desc.digest != target.digest:  # an index's manifest counts too
        size += image.manifest_desc.size
    chain = imagespec.chain_ids(image.config.diff_ids)
    spec = json.loads(image.config_data)
    return Resolved(manifest.config, chain[-1] if chain else "", size, spec)


def _fs_usage(timestamp: int, mountpoint: Path, used: int, inodes: int) -> api_pb2.FilesystemUsage:
    return api_pb2.FilesystemUsage(
        timestamp=timestamp,
        fs_id=api_pb2.FilesystemIdentifier(mountpoint=str(mountpoint)),
        used_bytes=api_pb2.UInt64Value(value=used),
        inodes_used=api_pb2.UInt64Value(value=inodes),
    )


def _directory_usage(root: Path) -> tuple[int, int]:
    """(bytes, inodes) of the blobs under the content store's root. Blocking."""
    used = inodes = 0
    for directory, dirs, files in os.walk(root / "blobs"):
        inodes += len(dirs)
        for name in files:
            try:
                used += os.lstat(os.path.join(directory, name)).st_blocks * 512
            except FileNotFoundError:
                continue
            inodes += 1
    return used, inodes
