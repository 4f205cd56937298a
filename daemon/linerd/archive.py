"""Image archives: export images as an OCI image layout tar; import OCI layouts and Docker archives.

Export writes, from the content store, a deterministic tar (entries sorted by name, times 0,
owners root with no names): ``oci-layout``, ``index.json`` with one entry per image annotated
with ``org.opencontainers.image.ref.name`` (the tag) and ``io.containerd.image.name`` (the full
name), optionally ``manifest.json`` as ``docker save`` writes it, and ``blobs/sha256/...``: the
images' targets, and for an index only the manifests (configs, layers) of the chosen platforms.
Everything is checked before the first byte goes out; blob bytes are read off the event loop.

Import reads a tar stream (plain or gzip) in a thread, entry by entry, as it arrives:

- every entry's path is checked: relative, no ``..``, and one of the layout's shapes
  (``blobs/sha256/<hex>``, a top-level file, or a Docker archive's ``<dir>/<file>``); devices
  and other special files are refused; a link (Docker archives link ``<id>/layer.tar`` to the
  layer file) is never created, only taken as another name of a regular file of the archive,
  and refused under ``blobs/`` or pointing anywhere else;
- every file but the small documents (``oci-layout``, ``index.json``, ``manifest.json``,
  ``repositories``) streams into the content store under the import's lease; a file under
  ``blobs/sha256/`` must hash to its name (DataLoss otherwise);
- then the images are resolved: an OCI layout by its ``index.json``; a Docker archive
  (``manifest.json`` with Config, RepoTags and Layers) by writing a Docker schema2 manifest
  for each entry, as containerd does. Every blob an image needs must be in the archive (or
  this namespace's store) before anything is named (NotFound otherwise);
- GC labels are set as a pull sets them, the images unpacked for this machine's platform
  (`linerd.unpack`, as a pull unpacks) and only then the image records written.

On any error the lease is deleted and a garbage collection run, so nothing of the import
remains; its ingests are aborted.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import io
import json
import posixpath
import re
import secrets
import tarfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import structlog

from liner_common import platforms
from linerd import imagespec
from linerd.content import documents
from linerd.content.documents import MAX_DOCUMENT
from linerd.content.store import ContentStore
from linerd.core.types import Descriptor, Image
from linerd.errdefs import (
    AlreadyExists,
    DataLoss,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from linerd.gc import labels as gc_labels
from linerd.gc.collector import Collector
from linerd.imagespec import Platform
from linerd.metadata.images import ImageStore
from linerd.metadata.leases import LeaseStore
from linerd.remotes import reference
from linerd.unpack import Unpacker, check_layers

log = structlog.get_logger("linerd.archive")

T = TypeVar("T")

OCI_LAYOUT_VERSION = "1.0.0"
REF_NAME = "org.opencontainers.image.ref.name"
IMAGE_NAME = "io.containerd.image.name"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
LAYERS = imagespec.LAYERS | {DOCKER_LAYER}
LEASE_LIFETIME = timedelta(hours=24)

CHUNK = 1 << 20
_BLOCK = 512
_DOCUMENTS = frozenset({"oci-layout", "index.json", "manifest.json", "repositories"})
_BLOB_PATH = re.compile(r"blobs/([a-z0-9]+)/([a-f0-9]+)")
_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:+=-]*")


# -- export ----------------------------------------------------------------------------------


@dataclass(slots=True)
class ExportRequest:
    names: list[str]
    platforms: list[Platform] = field(default_factory=list)
    all_platforms: bool = False
    docker_manifest: bool = False


@dataclass(slots=True)
class _Exported:
    image: Image
    manifests: list[tuple[Descriptor, imagespec.Manifest]]


def _header(name: str, size: int, directory: bool = False) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = 0 if directory else size
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.mode = 0o755 if directory else 0o644
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "strict")


def _padding(size: int) -> bytes:
    return b"\0" * (-size % _BLOCK)


def _tag(name: str) -> str:
    with contextlib.suppress(InvalidArgument):
        return reference.parse(name).tag or ""
    return ""


def familiar(name: str) -> str:
    """docker.io/library/busybox:latest -> busybox:latest, as `docker save` names images."""
    for prefix in ("docker.io/library/", "docker.io/"):
        if name.startswith(prefix):
            return name[len(prefix) :]
    return name


# -- import ----------------------------------------------------------------------------------


@dataclass(slots=True)
class ImportOptions:
    snapshotter: str = ""
    skip_unpack: bool = False
    base_name: str = ""
    all_platforms: bool = False


@dataclass(slots=True)
class _File:
    digest: str
    size: int


@dataclass(slots=True)
class _Read:
    """What the tar held: small documents by name, every other file as a stored blob."""

    documents: dict[str, bytes] = field(default_factory=dict)
    files: dict[str, _File] = field(default_factory=dict)


class _Chunks(io.RawIOBase):
    """The request stream as a file, read in a worker thread: each read that needs more bytes
    asks the event loop for the next chunk."""

    def __init__(
        self, chunks: AsyncIterator[bytes], loop: asyncio.AbstractEventLoop, stop: threading.Event
    ) -> None:
        self._chunks = chunks
        self._loop = loop
        self._stop = stop
        self._buffer = memoryview(b"")
        self._eof = False
        self.received = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._buffer and not self._eof:
            if self._stop.is_set():
                raise InvalidArgument("import cancelled")
            try:
                data = asyncio.run_coroutine_threadsafe(_next(self._chunks), self._loop).result()
            except concurrent.futures.CancelledError:
                raise InvalidArgument("import cancelled") from None
            if data is None:
                self._eof = True
            else:
                self.received += len(data)
                self._buffer = memoryview(data)
        n = min(len(buffer), len(self._buffer))
        buffer[:n] = self._buffer[:n]
        self._buffer = self._buffer[n:]
        return n


async def _next(chunks: AsyncIterator[bytes]) -> bytes | None:
    with contextlib.suppress(StopAsyncIteration):
        while True:
            data = await anext(chunks)
            if data:
                return data
    return None


def _check_path(name: str) -> str:
    """The entry's path inside the layout, or InvalidArgument."""
    if not name or "\0" in name or "\\" in name:
        raise InvalidArgument(f"archive entry {name!r}: invalid path")
    if name.startswith("/"):
        raise InvalidArgument(f"archive entry {name!r}: absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise InvalidArgument(f"archive entry {name!r}: path leaves the layout")
    path = "/".join(parts)
    if not path:
        return ""
    if parts[0] == "blobs":
        if len(parts) > 3 or (len(parts) == 3 and not _BLOB_PATH.fullmatch(path)):
            raise InvalidArgument(f"archive entry {name!r}: not a blob path (blobs/sha256/<hex>)")
        if len(parts) >= 2 and parts[1] != "sha256":
            raise InvalidArgument(f"archive entry {name!r}: unsupported digest algorithm")
        if len(parts) == 3 and len(parts[2]) != 64:
            raise InvalidArgument(f"archive entry {name!r}: not a sha256 digest")
        return path
    if len(parts) > 2 or not all(_PART.fullmatch(p) for p in parts):
        raise InvalidArgument(f"archive entry {name!r}: not a file of an image layout")
    return path


def _link_target(member: tarfile.TarInfo, path: str) -> str:
    """A link is only another name for a file of the archive (`docker save` and skopeo's
    docker-archive link `<id>/layer.tar` to the layer): never under blobs/, never outside."""
    what = f"archive entry {member.name!r}: link to {member.linkname!r}"
    if path.startswith("blobs/"):
        raise InvalidArgument(f"{what}: a link is not allowed among the blobs")
    target = member.linkname
    if target.startswith("/"):
        raise InvalidArgument(f"{what} points outside the layout")
    if member.issym():
        target = posixpath.join(posixpath.dirname(path), target)
    target = posixpath.normpath(target)
    if target.startswith("../") or target == "..":
        raise InvalidArgument(f"{what} points outside the layout")
    try:
        return _check_path(target)
    except InvalidArgument:
        raise InvalidArgument(f"{what} points outside the layout") from None


def _layer_type(head: bytes) -> str:
    if head.startswith(b"\x1f\x8b"):
        return DOCKER_LAYER_GZIP
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        return OCI_LAYER_ZSTD
    return DOCKER_LAYER


def _json_list(data: bytes, what: str) -> list[Any]:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidArgument(f"{what} is not valid JSON: {e}") from None
    if not isinstance(doc, list):
        raise InvalidArgument(f"{what} is not a JSON list")
    return doc


@dataclass(slots=True)
class _Named:
    name: str
    target: Descriptor
    unpack: Descriptor | None  # the manifest to unpack (host platform), None: none to unpack


class Archives:
    def __init__(
        self,
        content: ContentStore,
        images: ImageStore,
        leases: LeaseStore,
        gc: Collector,
        unpacker: Unpacker,
        default_snapshotter: str,
    ) -> None:
        self._content = content
        self._images = images
        self._leases = leases
        self._gc = gc
        self._unpacker = unpacker
        self._default_snapshotter = default_snapshotter
        # The signature policy (set by the local Transfer service): called with each image
        # before anything is unpacked or recorded; raising refuses the whole import.
        self.admit: Callable[[str, Image], Awaitable[None]] | None = None

    # -- shared ------------------------------------------------------------------------------

    async def _image(self, namespace: str, name: str) -> Image:
        try:
            return await self._images.get(namespace, name)
        except NotFound:
            with contextlib.suppress(InvalidArgument):
                normalized = reference.normalize(name)
                if normalized != name:
                    return await self._images.get(namespace, normalized)
            raise NotFound(f"image {name!r} not found") from None

    async def _read(self, namespace: str, desc: Descriptor, what: str) -> bytes:
        return await documents.read_document(self._content, namespace, desc, what)

    # -- export ------------------------------------------------------------------------------

    async def export(self, namespace: str, request: ExportRequest) -> AsyncIterator[bytes]:
        """The tar, in chunks of about CHUNK bytes; errors about what is missing come before
        the first chunk."""
        if not request.names:
            raise InvalidArgument("nothing to export: no image names given")
        wanted = platforms.or_host(request.platforms)
        exported: list[_Exported] = []
        blobs: dict[str, int] = {}
        for name in request.names:
            image = await self._image(namespace, name)
            exported.append(
                await self._plan(namespace, image, wanted, request.all_platforms, blobs)
            )
        return self._stream(namespace, exported, blobs, request.docker_manifest)

    async def _plan(
        self,
        namespace: str,
        image: Image,
        wanted: list[Platform],
        all_platforms: bool,
        blobs: dict[str, int],
    ) -> _Exported:
        target = image.target
        manifests: list[Descriptor] = []
        if target.media_type in imagespec.INDEXES:
            body = await self._read(namespace, target, "index")
            blobs[target.digest] = target.size
            entries = imagespec.index_manifests(body, target.digest)
            matching = platforms.select(entries, imagespec.entry_platform, wanted)
            if not all_platforms:
                entries = matching
                if not entries:
                    raise NotFound(
                        f"image {image.name}: no manifest for platform "
                        f"{', '.join(map(str, wanted))} in its index"
                    )
            # the wanted platform's first: the one manifest.json names
            entries = matching + [e for e in entries if e not in matching]
            manifests = [e.descriptor for e in entries]
        elif target.media_type in imagespec.MANIFESTS:
            manifests = [target]
        else:
            raise InvalidArgument(
                f"image {image.name}: cannot export a target of type {target.media_type!r}"
            )
        parsed = []
        for desc in manifests:
            body = await self._read(namespace, desc, "manifest")
            manifest = imagespec.parse_manifest(body, desc.digest)
            blobs[desc.digest] = desc.size
            for blob in [manifest.config, *manifest.layers]:
                try:
                    info = await self._content.info(namespace, blob.digest)
                except NotFound:
                    raise NotFound(
                        f"image {image.name}: blob {blob.digest} of manifest {desc.digest} is "
                        "not in the content store"
                    ) from None
                if info.size != blob.size:
                    raise FailedPrecondition(
                        f"image {image.name}: blob {blob.digest} is {info.size} bytes, "
                        f"the manifest says {blob.size}"
                    )
                blobs[blob.digest] = blob.size
            parsed.append((desc, manifest))
        return _Exported(image, parsed)

    async def _stream(
        self, namespace: str, exported: list[_Exported], blobs: dict[str, int], docker: bool
    ) -> AsyncIterator[bytes]:
        index: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": imagespec.OCI_INDEX,
            "manifests": [],
        }
        docker_entries: list[dict[str, Any]] = []
        for item in exported:
            target = item.image.target
            annotations = {IMAGE_NAME: item.image.name}
            tag = _tag(item.image.name)
            if tag:
                annotations[REF_NAME] = tag
            index["manifests"].append(
                {
                    "mediaType": target.media_type,
                    "digest": target.digest,
                    "size": target.size,
                    "annotations": annotations,
                }
            )
            if docker and item.manifests:
                _, manifest = item.manifests[0]
                docker_entries.append(
                    {
                        "Config": _blob_path(manifest.config.digest),
                        "RepoTags": [familiar(item.image.name)] if tag else [],
                        "Layers": [_blob_path(layer.digest) for layer in manifest.layers],
                    }
                )
        documents = {
            "oci-layout": json.dumps({"imageLayoutVersion": OCI_LAYOUT_VERSION}).encode(),
            "index.json": json.dumps(index, separators=(",", ":")).encode(),
        }
        if docker:
            documents["manifest.json"] = json.dumps(docker_entries, separators=(",", ":")).encode()
        entries: list[tuple[str, Any]] = [("blobs/", None), ("blobs/sha256/", None)]
        entries += [(_blob_path(d), (d, size)) for d, size in blobs.items()]
        entries += [(name, data) for name, data in documents.items()]
        entries.sort(key=lambda e: e[0])
        out = bytearray()
        for name, value in entries:
            if value is None:
                out += _header(name, 0, directory=True)
            elif isinstance(value, bytes):
                out += _header(name, len(value)) + value + _padding(len(value))
            else:
                digest, size = value
                out += _header(name, size)
                sent = 0
                async for chunk in await self._content.read(namespace, digest):
                    out += chunk
                    sent += len(chunk)
                    if len(out) >= CHUNK:
                        yield bytes(out)
                        out.clear()
                if sent != size:
                    raise DataLoss(f"blob {digest}: read {sent} bytes, expected {size}")
                out += _padding(size)
            if len(out) >= CHUNK:
                yield bytes(out)
                out.clear()
        out += b"\0" * (2 * _BLOCK)
        yield bytes(out)

    # -- import ------------------------------------------------------------------------------

    async def import_(
        self, namespace: str, options: ImportOptions, chunks: AsyncIterator[bytes]
    ) -> list[tuple[Image, bool]]:
        """Import the archive streamed as `chunks`; returns each image and whether it is new."""
        snapshotter = options.snapshotter or self._default_snapshotter
        if not options.skip_unpack:
            self._unpacker.snapshotter(snapshotter)  # InvalidArgument if not loaded
        lease = f"import-{time.time_ns()}-{secrets.token_hex(3)}"
        await self._leases.create(namespace, lease, gc_labels.expire_after(LEASE_LIFETIME))
        started = time.monotonic()
        ok = False
        try:
            read = await self._receive(namespace, lease, chunks)
            if "oci-layout" in read.documents:
                named = await self._oci(namespace, read, options)
            elif "manifest.json" in read.documents:
                named = await self._docker(namespace, lease, read, options)
            else:
                raise InvalidArgument(
                    "not an image archive: neither an OCI image layout (oci-layout, index.json) "
                    "nor a Docker archive (manifest.json)"
                )
            if not named:
                raise InvalidArgument("the archive names no image")
            if self.admit is not None:
                for item in named:
                    await self.admit(namespace, Image(name=item.name, target=item.target))
            if not options.skip_unpack:
                done: set[str] = set()
                for item in named:
                    if item.unpack is not None and item.unpack.digest not in done:
                        done.add(item.unpack.digest)
                        await self._unpacker.unpack_image(
                            namespace, item.unpack, snapshotter, lease
                        )
            result = []
            for item in named:
                image = Image(name=item.name, target=item.target)
                try:
                    result.append((await self._images.create(namespace, image), True))
                except AlreadyExists:
                    result.append((await self._images.update(namespace, image, ["target"]), False))
            ok = True
        finally:
            with contextlib.suppress(NotFound):
                await self._leases.delete(namespace, lease)
            if ok:
                self._gc.schedule()
            else:
                # Nothing half-imported remains: what only the lease held goes now.
                with contextlib.suppress(Exception):
                    await asyncio.shield(self._gc.collect())
        log.info(
            "imported",
            images=[i.name for i, _ in result],
            seconds=round(time.monotonic() - started, 3),
        )
        return result

    async def _receive(self, namespace: str, lease: str, chunks: AsyncIterator[bytes]) -> _Read:
        loop = asyncio.get_running_loop()
        stop = threading.Event()
        source = _Chunks(chunks, loop, stop)
        ingests: list[str] = []
        try:
            return await asyncio.to_thread(self._read_tar, namespace, lease, source, loop, ingests)
        finally:
            stop.set()
            for ref in ingests:
                with contextlib.suppress(Exception):
                    await self._content.abort(namespace, ref)

    def _read_tar(
        self,
        namespace: str,
        lease: str,
        source: _Chunks,
        loop: asyncio.AbstractEventLoop,
        ingests: list[str],
    ) -> _Read:
        """In a worker thread: every entry of the tar, checked, into memory or the store."""

        def call(work: Coroutine[Any, Any, T]) -> T:
            return asyncio.run_coroutine_threadsafe(work, loop).result()

        read = _Read()
        seen: set[str] = set()
        links: dict[str, str] = {}
        try:
            tar = tarfile.open(fileobj=io.BufferedReader(source, CHUNK), mode="r|*")  # noqa: SIM115 - closed by `with tar`
        except (tarfile.TarError, EOFError, OSError, ValueError) as e:
            raise InvalidArgument(f"not a tar archive: {e}") from None
        with tar:
            try:
                for number, member in enumerate(tar):
                    path = _check_path(member.name)
                    if member.isdir():
                        continue
                    if not path:
                        raise InvalidArgument(f"archive entry {member.name!r}: invalid path")
                    if path in seen:
                        raise InvalidArgument(f"archive entry {path!r} appears twice")
                    seen.add(path)
                    if member.issym() or member.islnk():
                        links[path] = _link_target(member, path)
                        continue
                    if not member.isreg():
                        raise InvalidArgument(
                            f"archive entry {member.name!r}: a special file (devices, FIFOs) is "
                            "not allowed in an image archive"
                        )
                    file = tar.extractfile(member)
                    assert file is not None
                    if path in _DOCUMENTS:
                        if member.size > MAX_DOCUMENT:  # index.json, manifest.json, ...
                            raise InvalidArgument(f"{path} is {member.size} bytes: over the limit")
                        read.documents[path] = file.read()
                        continue
                    match = _BLOB_PATH.fullmatch(path)
                    expected = f"sha256:{match.group(2)}" if match else ""
                    ref = f"{lease}-{number}"
                    digest = self._store_file(
                        namespace, lease, ref, file, member.size, expected, call, ingests
                    )
                    read.files[path] = _File(digest, member.size)
            except (tarfile.TarError, EOFError) as e:
                raise InvalidArgument(
                    f"the archive is not a valid tar (after {source.received} bytes): {e}"
                ) from None
            except (OSError, ValueError) as e:  # zlib, gzip errors
                raise InvalidArgument(f"the archive cannot be read: {e}") from None
        for path, target in links.items():
            file = read.files.get(target)
            if file is None:
                raise InvalidArgument(
                    f"archive entry {path!r}: link to {target!r}, which is not a file of the "
                    "archive"
                )
            read.files[path] = file
        return read

    def _store_file(
        self,
        namespace: str,
        lease: str,
        ref: str,
        file: Any,
        size: int,
        expected: str,
        call: Any,
        ingests: list[str],
    ) -> str:
        """One file into the content store, its digest checked; returns the digest."""
        try:
            writer = call(self._content.writer(namespace, ref, size, expected, lease))
        except AlreadyExists:
            writer = None  # stored already (now held by the lease): check the bytes all the same
        hasher = hashlib.sha256()
        offset = 0
        try:
            if writer is not None:
                ingests.append(ref)
            while True:
                data = file.read(CHUNK)
                if not data:
                    break
                hasher.update(data)
                if writer is not None:
                    writer.ingest.write(offset, data, size)
                offset += len(data)
            if offset != size:
                raise InvalidArgument(f"archive entry {ref}: truncated")
            digest = "sha256:" + hasher.hexdigest()
            if expected and digest != expected:
                raise DataLoss(f"blob {expected}: the archive's bytes hash to {digest}")
            if writer is not None:
                with contextlib.suppress(AlreadyExists):
                    call(writer.commit(size, digest, {}))
            return digest
        finally:
            if writer is not None:
                call(_close(writer))

    # -- import: OCI layouts -----------------------------------------------------------------

    async def _oci(self, namespace: str, read: _Read, options: ImportOptions) -> list[_Named]:
        try:
            layout = json.loads(read.documents["oci-layout"])
        except (ValueError, UnicodeDecodeError) as e:
            raise InvalidArgument(f"oci-layout is not valid JSON: {e}") from None
        version = layout.get("imageLayoutVersion") if isinstance(layout, dict) else None
        if version != OCI_LAYOUT_VERSION:
            raise InvalidArgument(f"unsupported OCI image layout version {version!r}")
        if "index.json" not in read.documents:
            raise InvalidArgument("the OCI image layout has no index.json")
        entries = imagespec.parse_index(read.documents["index.json"], "index.json")
        named = []
        for entry in entries:
            desc = entry.descriptor
            unpack = await self._complete(namespace, read, desc, options.all_platforms)
            named.append(_Named(self._name(desc, options), _plain(desc), unpack))
        return named

    def _name(self, desc: Descriptor, options: ImportOptions) -> str:
        base = options.base_name or f"import-{datetime.now(UTC):%Y-%m-%d}"
        name = desc.annotations.get(IMAGE_NAME, "")
        if name:
            return name
        ref = desc.annotations.get(REF_NAME, "")
        if ref:
            return ref if any(c in ref for c in "/:@") else f"{base}:{ref}"
        return f"{base}@{desc.digest}"

    async def _present(self, namespace: str, read: _Read, desc: Descriptor, what: str) -> None:
        file = read.files.get(_blob_path(desc.digest))
        if file is not None:
            if file.size != desc.size:
                raise InvalidArgument(
                    f"{what} {desc.digest} is {file.size} bytes in the archive, "
                    f"its descriptor says {desc.size}"
                )
            return
        try:
            info = await self._content.info(namespace, desc.digest)
        except NotFound:
            raise NotFound(f"{what} {desc.digest} is missing from the archive") from None
        if info.size != desc.size:
            raise InvalidArgument(f"{what} {desc.digest}: size {info.size}, expected {desc.size}")

    async def _has(self, namespace: str, read: _Read, desc: Descriptor) -> bool:
        if _blob_path(desc.digest) in read.files:
            return True
        try:
            await self._content.info(namespace, desc.digest)
        except NotFound:
            return False
        return True

    async def _complete(
        self, namespace: str, read: _Read, desc: Descriptor, all_platforms: bool
    ) -> Descriptor | None:
        """Check that the image under `desc` is all there and label it for the GC; returns
        the manifest to unpack (None: none for this machine)."""
        if desc.media_type in imagespec.MANIFESTS:
            await self._manifest(namespace, read, desc)
            return desc
        if desc.media_type not in imagespec.INDEXES:
            raise InvalidArgument(f"index.json: unsupported media type {desc.media_type!r}")
        await self._present(namespace, read, desc, "index")
        body = await self._read(namespace, desc, "index")
        entries = imagespec.index_manifests(body, desc.digest)
        match = platforms.first(entries, imagespec.entry_platform, [platforms.host_platform()])
        # A manifest not in the archive is a platform left out of the export (unless all are
        # wanted); one that is there must be complete.
        present = []
        for entry in entries:
            if not all_platforms and not await self._has(namespace, read, entry.descriptor):
                continue
            await self._manifest(namespace, read, entry.descriptor)
            present.append(entry)
        if not present:
            raise NotFound(f"index {desc.digest}: none of its manifests is in the archive")
        labels = gc_labels.index_refs(e.descriptor.digest for e in present)
        await self._content.update(namespace, desc.digest, labels, gc_labels.field_paths(labels))
        return desc if match is not None and match in present else None

    async def _manifest(self, namespace: str, read: _Read, desc: Descriptor) -> None:
        await self._present(namespace, read, desc, "manifest")
        manifest = imagespec.parse_manifest(
            await self._read(namespace, desc, "manifest"), desc.digest
        )
        await self._present(namespace, read, manifest.config, "config")
        config = imagespec.parse_config(
            await self._read(namespace, manifest.config, "config"), manifest.config.digest
        )
        check_layers(desc, manifest, config)
        for layer in manifest.layers:
            if layer.media_type not in LAYERS:
                raise InvalidArgument(
                    f"layer {layer.digest}: unsupported media type {layer.media_type!r}"
                )
            await self._present(namespace, read, layer, "layer")
        labels = gc_labels.manifest_refs(
            manifest.config.digest, [x.digest for x in manifest.layers]
        )
        await self._content.update(namespace, desc.digest, labels, gc_labels.field_paths(labels))

    # -- import: Docker archives -------------------------------------------------------------

    async def _docker(
        self, namespace: str, lease: str, read: _Read, options: ImportOptions
    ) -> list[_Named]:
        entries = _json_list(read.documents["manifest.json"], "manifest.json")
        named = []
        for number, entry in enumerate(entries):
            what = f"manifest.json entry {number}"
            if not isinstance(entry, dict):
                raise InvalidArgument(f"{what} is not an object")
            config_path, tags, layer_paths = (
                entry.get("Config"),
                entry.get("RepoTags") or [],
                entry.get("Layers"),
            )
            if not isinstance(config_path, str) or not config_path:
                raise InvalidArgument(f"{what} has no Config")
            if not isinstance(layer_paths, list) or not all(
                isinstance(p, str) for p in layer_paths
            ):
                raise InvalidArgument(f"{what} has no Layers list")
            if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
                raise InvalidArgument(f"{what}: RepoTags is not a list of names")
            config_file = self._file(read, config_path, f"{what}: Config")
            config = Descriptor(imagespec.DOCKER_CONFIG, config_file.digest, config_file.size)
            parsed = imagespec.parse_config(
                await self._read(namespace, config, "config"), config.digest
            )
            if len(parsed.diff_ids) != len(layer_paths):
                raise InvalidArgument(
                    f"{what} has {len(layer_paths)} layers but its config lists "
                    f"{len(parsed.diff_ids)} diff ids"
                )
            layers = []
            for path in layer_paths:
                file = self._file(read, path, f"{what}: layer")
                head = await asyncio.to_thread(_head, self._content.local.path(file.digest))
                layers.append(Descriptor(_layer_type(head), file.digest, file.size))
            body = json.dumps(
                {
                    "schemaVersion": 2,
                    "mediaType": imagespec.DOCKER_MANIFEST,
                    "config": _doc(config),
                    "layers": [_doc(layer) for layer in layers],
                },
                separators=(",", ":"),
            ).encode()
            desc = Descriptor(
                imagespec.DOCKER_MANIFEST, "sha256:" + hashlib.sha256(body).hexdigest(), len(body)
            )
            await self._write(namespace, lease, desc, body)
            labels = gc_labels.manifest_refs(config.digest, [x.digest for x in layers])
            await self._content.update(
                namespace, desc.digest, labels, gc_labels.field_paths(labels)
            )
            if not tags:
                base = options.base_name or f"import-{datetime.now(UTC):%Y-%m-%d}"
                named.append(_Named(f"{base}@{desc.digest}", desc, desc))
            for tag in tags:
                try:
                    name = reference.normalize(tag)
                except InvalidArgument as e:
                    raise InvalidArgument(f"{what}: RepoTags: {e}") from None
                named.append(_Named(name, desc, desc))
        return named

    @staticmethod
    def _file(read: _Read, path: str, what: str) -> _File:
        try:
            key = _check_path(path)
        except InvalidArgument as e:
            raise InvalidArgument(f"{what}: {e}") from None
        file = read.files.get(key)
        if file is None:
            raise NotFound(f"{what} {path!r} is missing from the archive")
        return file

    async def _write(self, namespace: str, lease: str, desc: Descriptor, data: bytes) -> None:
        try:
            writer = await self._content.writer(
                namespace, f"{lease}-{desc.digest}", desc.size, desc.digest, lease
            )
        except AlreadyExists:
            return
        try:
            await writer.write(0, data, desc.size)
            with contextlib.suppress(AlreadyExists):
                await writer.commit(desc.size, desc.digest, {})
        finally:
            writer.close()


async def _close(writer: Any) -> None:
    writer.close()


def _head(path: Any) -> bytes:
    with open(path, "rb") as f:
        return f.read(4)


def _doc(desc: Descriptor) -> dict[str, Any]:
    return {"mediaType": desc.media_type, "digest": desc.digest, "size": desc.size}


def _plain(desc: Descriptor) -> Descriptor:
    """An image target: the index.json entry without its annotations (names, not content)."""
    return Descriptor(desc.media_type, desc.digest, desc.size)


def _blob_path(digest: str) -> str:
    algorithm, _, hex_ = digest.partition(":")
    return f"blobs/{algorithm}/{hex_}"
