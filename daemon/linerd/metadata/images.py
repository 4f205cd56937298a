"""Image records: a name pointing at a target descriptor, with labels."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from linerd import faults
from linerd.core import validate
from linerd.core.types import Descriptor, Image
from linerd.errdefs import AlreadyExists, InvalidArgument, NotFound
from linerd.metadata.cache import RecordCache
from linerd.metadata.db import Database
from linerd.metadata.models import ImageRow
from linerd.metadata.namespaces import ensure


def check(image: Image) -> Image:
    if not image.name:
        raise InvalidArgument("image name must not be empty")
    validate.labels(image.labels)
    if not image.target.media_type:
        raise InvalidArgument(f"image {image.name!r}: target media type required")
    validate.digest(image.target.digest)
    if image.target.size < 0:
        raise InvalidArgument(f"image {image.name!r}: target size must not be negative")
    validate.labels(image.target.annotations)
    return image


def _image(row: ImageRow) -> Image:
    return Image(
        name=row.name,
        target=Descriptor(row.media_type, row.digest, row.size, dict(row.annotations)),
        labels=dict(row.labels),
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _get(session: Session, namespace: str, name: str) -> ImageRow:
    row = session.get(ImageRow, (namespace, name))
    if row is None:
        raise NotFound(f"image {name!r} not found")
    return row


def _set_target(row: ImageRow, target: Descriptor) -> None:
    row.media_type = target.media_type
    row.digest = target.digest
    row.size = target.size
    row.annotations = dict(target.annotations)


def _copy(image: Image) -> Image:
    target = dataclasses.replace(image.target, annotations=dict(image.target.annotations))
    return dataclasses.replace(image, target=target, labels=dict(image.labels))


class ImageStore:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._cache: RecordCache[tuple[str, str], Image] = RecordCache(_copy)

    async def get(self, namespace: str, name: str) -> Image:
        key = (namespace, name)
        if (hit := self._cache.get(key)) is not None:
            return hit
        return await self._db.run(lambda s: self._cache.put(key, _image(_get(s, namespace, name))))

    async def list(self, namespace: str) -> list[Image]:
        def list_(session: Session) -> list[Image]:
            rows = session.scalars(
                select(ImageRow).where(ImageRow.namespace == namespace).order_by(ImageRow.name)
            )
            return [_image(r) for r in rows]

        return await self._db.run(list_)

    async def create(self, namespace: str, image: Image) -> Image:
        check(image)

        def create(session: Session) -> Image:
            self._cache.drop((namespace, image.name))
            ensure(session, namespace)
            if session.get(ImageRow, (namespace, image.name)) is not None:
                raise AlreadyExists(f"image {image.name!r} already exists")
            now = datetime.now(UTC)
            row = ImageRow(
                namespace=namespace,
                name=image.name,
                labels=dict(image.labels),
                created_at=now,
                updated_at=now,
            )
            _set_target(row, image.target)
            session.add(row)
            faults.point("image-create")
            return _image(row)

        return await self._db.run(create)

    async def update(self, namespace: str, image: Image, paths: list[str]) -> Image:
        """No paths replaces labels and target; otherwise `labels[.<key>]`, `target`,
        `annotations[.<key>]` (the target's annotations)."""
        if not image.name:
            raise InvalidArgument("image name must not be empty")
        for path in paths:
            head = path.split(".", 1)[0]
            if head not in ("labels", "annotations") and path != "target":
                raise InvalidArgument(f"cannot update {path!r} field on image {image.name!r}")
        if not paths or "target" in paths:
            check(image)

        def update(session: Session) -> Image:
            self._cache.drop((namespace, image.name))
            row = _get(session, namespace, image.name)
            if not paths:
                row.labels = validate.labels(image.labels)
                _set_target(row, image.target)
            else:
                if "target" in paths:
                    _set_target(row, image.target)
                labels = validate.apply_label_mask(row.labels, image.labels, paths)
                if labels is not None:
                    row.labels = labels
                annotations = validate.apply_label_mask(
                    row.annotations, image.target.annotations, paths, prefix="annotations"
                )
                if annotations is not None:
                    row.annotations = annotations
            row.updated_at = datetime.now(UTC)
            return _image(row)

        return await self._db.run(update)

    async def delete(self, namespace: str, name: str) -> None:
        def delete(session: Session) -> None:
            self._cache.drop((namespace, name))
            session.delete(_get(session, namespace, name))

        await self._db.run(delete)
