"""Image records: a name pointing at a target descriptor, with labels."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, bindparam, delete, insert, select, update

from linerd import faults
from linerd.core import validate
from linerd.core.types import Descriptor, Image
from linerd.errdefs import AlreadyExists, InvalidArgument, NotFound
from linerd.metadata.cache import RecordCache
from linerd.metadata.db import Database
from linerd.metadata.models import images
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


_KEY = (images.c.namespace == bindparam("b_namespace")) & (images.c.name == bindparam("b_name"))
_GET = select(images).where(_KEY)


def _image(row: Mapping[str, Any]) -> Image:
    return Image(
        name=row["name"],
        target=Descriptor(row["media_type"], row["digest"], row["size"], dict(row["annotations"])),
        labels=dict(row["labels"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _get(conn: Connection, namespace: str, name: str) -> dict[str, Any]:
    row = conn.execute(_GET, {"b_namespace": namespace, "b_name": name}).first()
    if row is None:
        raise NotFound(f"image {name!r} not found")
    return dict(row._mapping)


def _set_target(row: dict[str, Any], target: Descriptor) -> None:
    row["media_type"] = target.media_type
    row["digest"] = target.digest
    row["size"] = target.size
    row["annotations"] = dict(target.annotations)


def _copy(image: Image) -> Image:
    target = dataclasses.replace(image.target, annotations=dict(image.target.annotations))
    return dataclasses.replace(image, target=target, labels=dict(image.labels))


def _insert(conn: Connection, namespace: str, image: Image, now: datetime) -> dict[str, Any]:
    """A new image record (the caller checked there is none); its row."""
    row: dict[str, Any] = {
        "namespace": namespace,
        "name": image.name,
        "labels": dict(image.labels),
        "created_at": now,
        "updated_at": now,
    }
    _set_target(row, image.target)
    conn.execute(insert(images), row)
    faults.point("image-create")
    return row


class ImageStore:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._cache: RecordCache[tuple[str, str], Image] = RecordCache(_copy)
        # namespace -> count of write transactions begun (database thread, before their
        # commit): the CRI reuses its view of `k8s.io` while this stays (cri/images.py).
        self._generations: dict[str, int] = {}

    def generation(self, namespace: str) -> int:
        """Any thread: changes before any write to `namespace` commits."""
        return self._generations.get(namespace, 0)

    def _written(self, namespace: str, name: str) -> None:
        """Database thread, inside the writing transaction."""
        self._cache.drop((namespace, name))
        self._generations[namespace] = self._generations.get(namespace, 0) + 1

    async def get(self, namespace: str, name: str) -> Image:
        key = (namespace, name)
        if (hit := self._cache.get(key)) is not None:
            return hit
        return await self._db.run(lambda c: self._cache.put(key, _image(_get(c, namespace, name))))

    async def list(self, namespace: str) -> list[Image]:
        def list_(conn: Connection) -> list[Image]:
            rows = conn.execute(
                select(images).where(images.c.namespace == namespace).order_by(images.c.name)
            )
            return [_image(r._mapping) for r in rows]

        return await self._db.run(list_)

    async def create(self, namespace: str, image: Image) -> Image:
        check(image)

        def create(conn: Connection) -> Image:
            self._written(namespace, image.name)
            ensure(conn, namespace)
            if conn.execute(_GET, {"b_namespace": namespace, "b_name": image.name}).first():
                raise AlreadyExists(f"image {image.name!r} already exists")
            return _image(_insert(conn, namespace, image, datetime.now(UTC)))

        return await self._db.run(create)

    async def put(self, namespace: str, wanted: list[Image]) -> list[tuple[Image, bool | None]]:
        """Each of `wanted` created, or its record brought to its target with its labels set
        (others kept), all in one transaction. Per image: its record and True (created),
        False (updated) or None (it was so already: nothing written)."""
        for image in wanted:
            check(image)

        def put_(conn: Connection) -> list[tuple[Image, bool | None]]:
            ensure(conn, namespace)
            now = datetime.now(UTC)
            out: list[tuple[Image, bool | None]] = []
            for image in wanted:
                key = {"b_namespace": namespace, "b_name": image.name}
                found = conn.execute(_GET, key).first()
                if found is None:
                    self._written(namespace, image.name)
                    out.append((_image(_insert(conn, namespace, image, now)), True))
                    continue
                row = dict(found._mapping)
                labels = row["labels"]
                if row["digest"] == image.target.digest and all(
                    labels.get(k) == v for k, v in image.labels.items()
                ):
                    out.append((_image(row), None))
                    continue
                self._written(namespace, image.name)
                _set_target(row, image.target)
                row["labels"] = {**labels, **image.labels}
                row["updated_at"] = now
                conn.execute(
                    update(images)
                    .where(_KEY)
                    .values({k: v for k, v in row.items() if k not in ("namespace", "name")}),
                    key,
                )
                out.append((_image(row), False))
            return out

        return await self._db.run(put_)

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

        def update_(conn: Connection) -> Image:
            self._written(namespace, image.name)
            row = _get(conn, namespace, image.name)
            if not paths:
                row["labels"] = validate.labels(image.labels)
                _set_target(row, image.target)
            else:
                if "target" in paths:
                    _set_target(row, image.target)
                labels = validate.apply_label_mask(row["labels"], image.labels, paths)
                if labels is not None:
                    row["labels"] = labels
                annotations = validate.apply_label_mask(
                    row["annotations"], image.target.annotations, paths, prefix="annotations"
                )
                if annotations is not None:
                    row["annotations"] = annotations
            row["updated_at"] = datetime.now(UTC)
            conn.execute(
                update(images)
                .where(_KEY)
                .values({k: v for k, v in row.items() if k not in ("namespace", "name")}),
                {"b_namespace": namespace, "b_name": image.name},
            )
            return _image(row)

        return await self._db.run(update_)

    async def delete(self, namespace: str, name: str) -> None:
        def delete_(conn: Connection) -> None:
            self._written(namespace, name)
            key = {"b_namespace": namespace, "b_name": name}
            if conn.execute(delete(images).where(_KEY), key).rowcount == 0:
                raise NotFound(f"image {name!r} not found")

        await self._db.run(delete_)
