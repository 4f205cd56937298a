"""OCI and Docker image documents: media types, parsing with clear errors, platforms, chain IDs.

Pure functions over bytes; nothing here talks to a store or a registry.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from liner_common.imagespec import chain_ids as chain_ids  # re-exported

# Re-exported: the daemon's modules read the media types from here.
from liner_common.mediatypes import (  # noqa: F401
    CONFIGS,
    DOCKER_CONFIG,
    DOCKER_LIST,
    DOCKER_MANIFEST,
    INDEXES,
    LAYERS,
    MANIFESTS,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_MANIFEST,
)
from liner_common.platforms import Platform
from liner_common.platforms import host_platform as host_platform  # re-exported
from linerd.core import validate
from linerd.core.types import Descriptor
from linerd.errdefs import InvalidArgument


@dataclass(slots=True)
class IndexEntry:
    descriptor: Descriptor
    platform: Platform | None


@dataclass(slots=True)
class Manifest:
    config: Descriptor
    layers: list[Descriptor]


@dataclass(slots=True)
class ImageConfig:
    diff_ids: list[str]
    platform: Platform
    config: dict[str, Any] = field(default_factory=dict)


def _json(data: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidArgument(f"{what} is not valid JSON: {e}") from None
    except RecursionError:
        raise InvalidArgument(f"{what} is not valid JSON: nested too deeply") from None
    if not isinstance(doc, dict):
        raise InvalidArgument(f"{what} is not a JSON object")
    return doc


def _descriptor(value: Any, what: str) -> Descriptor:
    if not isinstance(value, dict):
        raise InvalidArgument(f"{what}: descriptor is not an object")
    media_type, digest, size = value.get("mediaType"), value.get("digest"), value.get("size")
    if not isinstance(media_type, str) or not media_type:
        raise InvalidArgument(f"{what}: descriptor without mediaType")
    if not isinstance(digest, str):
        raise InvalidArgument(f"{what}: descriptor without digest")
    try:
        validate.digest(digest)
    except InvalidArgument as e:
        raise InvalidArgument(f"{what}: {e}") from None
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise InvalidArgument(f"{what}: descriptor {digest} has an invalid size")
    annotations = value.get("annotations") or {}
    if not isinstance(annotations, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in annotations.items()
    ):
        raise InvalidArgument(f"{what}: descriptor {digest} has invalid annotations")
    return Descriptor(media_type, digest, size, dict(annotations))


def _platform(value: Any) -> Platform | None:
    if not isinstance(value, dict):
        return None
    os_, arch = value.get("os"), value.get("architecture")
    if not isinstance(os_, str) or not isinstance(arch, str):
        return None
    variant = value.get("variant") if isinstance(value.get("variant"), str) else ""
    return Platform(os_, arch, variant or "")


def parse_index(data: bytes, digest: str) -> list[IndexEntry]:
    what = f"index {digest}"
    doc = _json(data, what)
    manifests = doc.get("manifests")
    if not isinstance(manifests, list):
        raise InvalidArgument(f"{what} has no manifests list")
    return [
        IndexEntry(
            _descriptor(m, what), _platform(m.get("platform") if isinstance(m, dict) else None)
        )
        for m in manifests
    ]


def index_manifests(data: bytes, digest: str) -> list[IndexEntry]:
    """The image manifests an index lists, in its order (nested indexes and other
    artifacts left out); choose among them with `liner_common.platforms.select`."""
    return [e for e in parse_index(data, digest) if e.descriptor.media_type in MANIFESTS]


def entry_platform(entry: IndexEntry) -> Platform | None:
    return entry.platform


def parse_manifest(data: bytes, digest: str) -> Manifest:
    what = f"manifest {digest}"
    doc = _json(data, what)
    if doc.get("schemaVersion") != 2:
        raise InvalidArgument(f"{what}: unsupported schemaVersion {doc.get('schemaVersion')!r}")
    config = _descriptor(doc.get("config"), what)
    layers = doc.get("layers")
    if not isinstance(layers, list):
        raise InvalidArgument(f"{what} has no layers list")
    return Manifest(config, [_descriptor(layer, what) for layer in layers])


def parse_config(data: bytes, digest: str) -> ImageConfig:
    what = f"image config {digest}"
    doc = _json(data, what)
    rootfs = doc.get("rootfs")
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(diff_ids, list):
        raise InvalidArgument(f"{what} has no rootfs.diff_ids")
    for diff_id in diff_ids:
        if not isinstance(diff_id, str):
            raise InvalidArgument(f"{what}: a diff id is not a string")
        validate.digest(diff_id)
    platform = _platform(doc) or Platform("linux", "amd64")
    config = doc.get("config") if isinstance(doc.get("config"), dict) else {}
    return ImageConfig(list(diff_ids), platform, config)
