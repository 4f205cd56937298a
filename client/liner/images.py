"""Reading an image's documents (index, manifest, config) through the Content service.

Used by `images ls` (size and platforms) and `images inspect`. Each document is read once per
command, so tags sharing a target cost nothing extra.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from liner.client import Client, Descriptor, Image
from liner.errors import NotFound
from liner_common.mediatypes import CONFIGS, INDEXES, MANIFESTS
from liner_common.platforms import Platform


def kind(media_type: str) -> str:
    """`index`, `manifest`, `config` or `layer`: the prefix ctr gives a blob in its progress."""
    if media_type in INDEXES:
        return "index"
    if media_type in MANIFESTS:
        return "manifest"
    if media_type in CONFIGS:
        return "config"
    return "layer"


def _descriptor(obj: Any) -> Descriptor | None:
    if not isinstance(obj, dict):
        return None
    digest, size = obj.get("digest"), obj.get("size")
    if not isinstance(digest, str) or not isinstance(size, int):
        return None
    annotations = obj.get("annotations")
    return Descriptor(
        str(obj.get("mediaType", "")),
        digest,
        size,
        dict(annotations) if isinstance(annotations, dict) else {},
    )


def _platform(obj: Any) -> Platform | None:
    if not isinstance(obj, dict) or not obj.get("os") or not obj.get("architecture"):
        return None
    return Platform(
        str(obj["os"]), str(obj["architecture"]), str(obj.get("variant") or "")
    ).normalized()


class Documents:
    """JSON documents from the content store, each read once; a missing one is None."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._cache: dict[str, Any] = {}

    def get(self, digest: str) -> Any:
        if digest not in self._cache:
            try:
                data = self._client.read_blob(digest)
            except NotFound:
                self._cache[digest] = None
            else:
                try:
                    self._cache[digest] = json.loads(data)
                except ValueError:
                    self._cache[digest] = None
        return self._cache[digest]

    def index_entries(self, index: Descriptor) -> Iterator[tuple[Descriptor, Platform | None]]:
        """The manifests an index lists (nested indexes are not followed)."""
        doc = self.get(index.digest)
        manifests = doc.get("manifests") if isinstance(doc, dict) else None
        for entry in manifests if isinstance(manifests, list) else []:
            desc = _descriptor(entry)
            if desc is not None and desc.media_type in MANIFESTS:
                yield desc, _platform(entry.get("platform"))

    def manifest_for(
        self, target: Descriptor, platform: Platform
    ) -> tuple[Descriptor, dict[str, Any]] | None:
        """The manifest `target` stands for on `platform`; failing that (the platform was not
        pulled), the first of the index's manifests in the store; None if there is none."""
        if target.media_type not in INDEXES:
            doc = self.get(target.digest)
            return (target, doc) if isinstance(doc, dict) else None
        present = []
        for desc, entry_platform in self.index_entries(target):
            doc = self.get(desc.digest)
            if not isinstance(doc, dict):
                continue
            if entry_platform is not None and entry_platform.matches(platform):
                return desc, doc
            present.append((desc, doc))
        return present[0] if present else None

    def platforms(self, target: Descriptor) -> list[Platform]:
        """An index's platforms (all of them, pulled or not), or a manifest's config's."""
        if target.media_type in INDEXES:
            found: list[Platform] = []
            for _, p in self.index_entries(target):
                if p is not None and "unknown" not in (p.os, p.architecture) and p not in found:
                    found.append(p)
            return found
        manifest = self.get(target.digest)
        config = _descriptor(manifest.get("config")) if isinstance(manifest, dict) else None
        doc = self.get(config.digest) if config is not None else None
        p = _platform(doc) if isinstance(doc, dict) else None
        return [p] if p is not None else []


@dataclass(frozen=True, slots=True)
class Summary:
    """What `images ls` shows of an image beyond its record."""

    size: int | None  # config + layers of the platform's manifest; None if not in the store
    platforms: list[Platform] = field(default_factory=list)


def summarize(docs: Documents, image: Image, platform: Platform) -> Summary:
    found = docs.manifest_for(image.target, platform)
    size = None
    if found is not None:
        _, manifest = found
        parts = [manifest.get("config"), *(manifest.get("layers") or [])]
        descs = [_descriptor(p) for p in parts]
        if all(d is not None for d in descs):
            size = sum(d.size for d in descs if d is not None)
    return Summary(size, docs.platforms(image.target))


# -- JSON as containerd's Go types marshal --------------------------------------------------


def json_time(when: datetime | None) -> str:
    """RFC 3339 in UTC with a `Z` (Go's zero time when unset)."""
    if when is None:
        return "0001-01-01T00:00:00Z"
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")


def descriptor_json(desc: Descriptor) -> dict[str, Any]:
    """An OCI descriptor as `json.Marshal(ocispec.Descriptor)` writes it."""
    out: dict[str, Any] = {"mediaType": desc.media_type, "digest": desc.digest, "size": desc.size}
    if desc.annotations:
        out["annotations"] = dict(sorted(desc.annotations.items()))
    return out


def image_json(image: Image) -> dict[str, Any]:
    """An image record as `json.Marshal(images.Image)` writes it."""
    return {
        "Name": image.name,
        "Labels": dict(sorted(image.labels.items())) or None,
        "Target": descriptor_json(image.target),
        "CreatedAt": json_time(image.created_at),
        "UpdatedAt": json_time(image.updated_at),
    }


def inspect(docs: Documents, image: Image, platform: Platform) -> dict[str, Any]:
    """`images inspect`: the record, then the documents in the store (absent ones left out)."""
    out: dict[str, Any] = {"Image": image_json(image)}
    if image.target.media_type in INDEXES:
        index = docs.get(image.target.digest)
        if index is not None:
            out["Index"] = index
    found = docs.manifest_for(image.target, platform)
    if found is not None:
        _, manifest = found
        out["Manifest"] = manifest
        config = _descriptor(manifest.get("config"))
        doc = docs.get(config.digest) if config is not None else None
        if doc is not None:
            out["Config"] = doc
    return out
