"""Finding an image of `k8s.io` as the CRI names it (a reference, an image id = its config
digest, or a repo digest), with what a container needs of it: its config, the top chain ID
of its layers and its names (repo tags and repo digests).

Manifests and configs are immutable content: what is read of them is cached by digest.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from liner_common import imagespec as common_imagespec
from linerd.content import documents
from linerd.core.types import Descriptor, Image
from linerd.cri.meta import NAMESPACE
from linerd.errdefs import InvalidArgument, NotFound
from linerd.remotes import reference

if TYPE_CHECKING:
    from linerd.content.store import ContentStore
    from linerd.local.images import Images

_HEX64 = re.compile(r"^[a-f0-9]{64}$")


@dataclass(frozen=True, slots=True)
class ResolvedImage:
    id: str  # the config digest
    config: dict[str, Any]  # the image config's `config` object (Entrypoint, Env, ...)
    chain_id: str  # top snapshot ("" for an image without layers)
    repo_tags: list[str] = field(default_factory=list)
    repo_digests: list[str] = field(default_factory=list)

    @property
    def first_tag(self) -> str:
        return self.repo_tags[0] if self.repo_tags else ""

    @property
    def first_digest(self) -> str:
        return self.repo_digests[0] if self.repo_digests else self.id


class ImageLookup:
    """`cri_images`: the `images` group (cri/images.py), when there is one, so a container
    reports the same id, tags and digests as ImageStatus; else this module's own reading."""

    def __init__(self, images: Images, content: ContentStore, cri_images: Any = None) -> None:
        self._images = images
        self._content = content
        self._cri_images = cri_images
        # target digest -> (config digest, config object, chain id)
        self._cache: dict[str, tuple[str, dict[str, Any], str]] = {}

    async def _describe(self, target: Descriptor) -> tuple[str, dict[str, Any], str]:
        hit = self._cache.get(target.digest)
        if hit is not None:
            return hit
        image = await documents.read_image(self._content, NAMESPACE, target)
        manifest, config = image.manifest, image.config
        chain = common_imagespec.chain_ids(config.diff_ids)
        found = (manifest.config.digest, dict(config.config), chain[-1] if chain else "")
        self._cache[target.digest] = found
        return found

    async def resolve(self, name: str) -> ResolvedImage:
        """The image `name` names: NotFound if `k8s.io` has none."""
        if not name:
            raise InvalidArgument("image not specified")
        if self._cri_images is not None:
            found = await self._cri_images.lookup(name)
            if found is None:
                raise NotFound(f"image {name!r} not found")
            return ResolvedImage(
                found.id,
                dict(found.config),
                found.chain_id,
                list(found.repo_tags),
                list(found.repo_digests),
            )
        records = await self._images.list(NAMESPACE)
        wanted_id = ""
        if name.startswith("sha256:"):
            wanted_id = name
        elif _HEX64.match(name):
            wanted_id = "sha256:" + name
        target: Descriptor | None = None
        if wanted_id:
            for record in records:
                described = await self._try_describe(record)
                if described is not None and described[0] == wanted_id:
                    target = record.target
                    break
        else:
            try:
                normalized = reference.normalize(name)
            except InvalidArgument:
                normalized = name
            for record in records:
                if record.name in (normalized, name):
                    target = record.target
                    break
        if target is None:
            raise NotFound(f"image {name!r} not found")
        image_id, config, chain_id = await self._describe(target)
        tags, digests = [], []
        for record in records:
            if record.target.digest != target.digest:
                continue
            if "@" in record.name:
                digests.append(record.name)
            elif not record.name.startswith("sha256:"):
                tags.append(record.name)
                repo = (
                    record.name.rsplit(":", 1)[0]
                    if ":" in record.name.rsplit("/", 1)[-1]
                    else record.name
                )
                digest_name = f"{repo}@{target.digest}"
                if digest_name not in digests:
                    digests.append(digest_name)
        return ResolvedImage(image_id, config, chain_id, sorted(tags), digests)

    async def _try_describe(self, record: Image) -> tuple[str, dict[str, Any], str] | None:
        try:
            return await self._describe(record.target)
        except (NotFound, InvalidArgument):
            return None
