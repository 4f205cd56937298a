"""Reading a small document (index, manifest, image config) whole from the content store.

Every reader of image documents goes through `read_document`: pulls, pushes, imports,
exports and unpacks. A document is read into memory and parsed as JSON, so its size is
bounded before any byte is read, and the bytes are hashed against the digest: a blob
changed or cut on disk is DataLoss, never a silently different image.

The limit, `MAX_DOCUMENT` (4 MiB), is the one the registry client already applies to the
manifests and indexes it fetches (`linerd.remotes.client.MAX_MANIFEST_SIZE` is this one), itself
containerd's resolver limit for manifests and indexes (`MaxManifestSize`, 4·1048·1048
bytes), so whatever a pull can fetch the store can read back. containerd reads configs
without a limit of its own; liner bounds them by the same 4 MiB (they were 8 MiB in pulls):
an image config lists a diff ID and a history line per layer, a few hundred KiB for the
largest images, and one bound for every document is one rule to know.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from pathlib import Path

from liner_common import platforms
from linerd import imagespec
from linerd.content.store import ContentStore
from linerd.core.types import ContentInfo, Descriptor
from linerd.errdefs import DataLoss, FailedPrecondition, InvalidArgument, NotFound

MAX_DOCUMENT = 4 << 20


def check_size(desc: Descriptor, what: str, limit: int = MAX_DOCUMENT) -> None:
    """InvalidArgument if the document `desc` names is too large to be read whole."""
    if desc.size > limit:
        raise InvalidArgument(
            f"{what} {desc.digest} is {desc.size} bytes: over the {limit}-byte limit "
            "for image documents"
        )


def check_record(info: ContentInfo, desc: Descriptor, what: str) -> None:
    """FailedPrecondition if the stored blob is not the size the descriptor says."""
    if info.size != desc.size:
        raise FailedPrecondition(
            f"{what} {desc.digest} is {info.size} bytes, its descriptor says {desc.size}"
        )


def read_verified(path: Path, desc: Descriptor, what: str) -> bytes:
    """The file's bytes, checked against `desc`'s size and digest. Blocking."""
    data = path.read_bytes()
    if len(data) != desc.size:
        raise DataLoss(f"{what} {desc.digest}: {len(data)} bytes stored, expected {desc.size}")
    if "sha256:" + hashlib.sha256(data).hexdigest() != desc.digest:
        raise DataLoss(f"{what} {desc.digest}: the stored bytes do not match the digest")
    return data


async def read_document(
    content: ContentStore, namespace: str, desc: Descriptor, what: str
) -> bytes:
    """The document `desc` names, as this namespace sees it: NotFound if it has no record
    here, FailedPrecondition if the record's size is not the descriptor's, InvalidArgument
    if it is over `MAX_DOCUMENT`, DataLoss if the bytes do not hash to the digest. One
    record lookup and one thread hop (read and hash together). A caller that has looked the
    record up already uses the three steps (`check_size`, `check_record`, `read_verified`)."""
    check_size(desc, what)
    try:
        info = await content.info(namespace, desc.digest)
    except NotFound:
        raise NotFound(f"{what} {desc.digest} is not in the content store") from None
    check_record(info, desc, what)
    return await asyncio.to_thread(read_verified, content.local.path(desc.digest), desc, what)


@dataclass(frozen=True, slots=True)
class PlatformImage:
    """An image as this machine runs it: the manifest chosen and its config."""

    manifest_desc: Descriptor
    manifest: imagespec.Manifest
    config: imagespec.ImageConfig
    config_data: bytes  # the config as stored (the CRI answers it whole)


async def read_image(content: ContentStore, namespace: str, target: Descriptor) -> PlatformImage:
    """The manifest for this machine's platform (from an index: NotFound if it has none; a
    lone manifest whatever its platform) and its config, each read with `read_document`."""
    desc = target
    if target.media_type in imagespec.INDEXES:
        body = await read_document(content, namespace, target, "index")
        here = platforms.host_platform()
        entries = imagespec.index_manifests(body, target.digest)
        match = platforms.first(entries, imagespec.entry_platform, [here])
        if match is None:
            raise NotFound(f"index {target.digest} has no manifest for platform {here}")
        desc = match.descriptor
    body = await read_document(content, namespace, desc, "manifest")
    manifest = imagespec.parse_manifest(body, desc.digest)
    body = await read_document(content, namespace, manifest.config, "config")
    config = imagespec.parse_config(body, manifest.config.digest)
    return PlatformImage(desc, manifest, config, body)
