"""OCI and Docker image documents: media types, parsing with clear errors, platforms, chain IDs.

Pure functions over bytes; nothing here talks to a store or a registry.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from liner_common.platforms import Platform
from liner_common.platforms import host_platform as host_platform  # re-exported
from linerd.core import validate
from linerd.core.types import Descriptor
from linerd.errdefs import InvalidArgument

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"

INDEXES = frozenset({OCI_INDEX, DOCKER_LIST})
MANIFESTS = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
CONFIGS = frozenset({OCI_CONFIG, DOCKER_CONFIG})
LAYERS = frozenset(
    {
        "application/vnd.oci.image.layer.v1.tar",
        "application/vnd.oci.image.layer.v1.tar+gzip",
        "application/vnd.oci.image.layer.v1.tar+zstd",
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    }
)


def parse_platform(text: str) -> Platform:
    """`linux/amd64`, `linux/arm64/v8`, or just `arm64` (os linux)."""
    parts = text.strip().split("/")
    if not text.strip() or len(parts) > 3 or any(not p for p in parts):
        raise InvalidArgument(f"invalid platform {text!r}: want os/arch[/variant]")
    if len(parts) == 1:
        return Platform("linux", parts[0]).normalized()
    return Platform(*parts).normalized()


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


def chain_ids(diff_ids: Sequence[str]) -> list[str]:
    """C1 = D1; Ci = sha256("C(i-1) Di")."""
    chain: list[str] = []
    for diff_id in diff_ids:
        if not chain:
            chain.append(diff_id)
        else:
            joined = f"{chain[-1]} {diff_id}".encode()
            chain.append("sha256:" + hashlib.sha256(joined).hexdigest())
    return chain
