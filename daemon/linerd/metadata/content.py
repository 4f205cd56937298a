"""Content records: which namespace knows which blob, with its labels."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from linerd.core import validate
from linerd.core.types import ContentInfo, LeaseResource
from linerd.errdefs import InvalidArgument, NotFound
from linerd.metadata.cache import RecordCache
from linerd.metadata.db import Database
from linerd.metadata.leases import add_resource_in
from linerd.metadata.models import ContentRow
from linerd.metadata.namespaces import ensure


def _info(row: ContentRow) -> ContentInfo:
    return ContentInfo(
        digest=row.digest,
        size=row.size,
        created_at=row.created_at,
        updated_at=row.updated_at,
        labels=dict(row.labels),
    )


def _get(session: Session, namespace: str, digest: str) -> ContentRow:
    row = session.get(ContentRow, (namespace, digest))
    if row is None:
        raise NotFound(f"content digest {digest} not found")
    return row


def _copy(info: ContentInfo) -> ContentInfo:
    return dataclasses.replace(info, labels=dict(info.labels))


class ContentRecords:
    def __init__(self, db: Database) -> None:
        self._db = db
        # Clients look the same few blobs up over and over (ctr run reads the index, manifest
        # and config with an Info before each Read): answer those without a transaction.
        self.cache: RecordCache[tuple[str, str], ContentInfo] = RecordCache(_copy)

    async def get(self, namespace: str, digest: str) -> ContentInfo:
        key = (namespace, digest)
        if (hit := self.cache.get(key)) is not None:
            return hit
        return await self._db.run(lambda s: self.cache.put(key, _info(_get(s, namespace, digest))))

    async def exists(self, namespace: str, digest: str) -> bool:
        return await self._db.run(lambda s: s.get(ContentRow, (namespace, digest)) is not None)

    async def ensure_namespace(self, namespace: str) -> None:
        """A write is a mutating call: its namespace exists from the first STAT on."""
        await self._db.run(lambda s: ensure(s, namespace))

    async def add(
        self, namespace: str, digest: str, size: int, labels: dict[str, str], lease: str | None
    ) -> ContentInfo | None:
        """Record a committed blob held by `lease`; None if this namespace had it already
        (the lease then holds it all the same)."""
        labels = validate.labels(labels)

        def add(session: Session) -> ContentInfo | None:
            self.cache.drop((namespace, digest))
            ensure(session, namespace)
            if lease:
                add_resource_in(session, namespace, lease, LeaseResource(id=digest, type="content"))
            if session.get(ContentRow, (namespace, digest)) is not None:
                return None
            now = datetime.now(UTC)
            row = ContentRow(
                namespace=namespace,
                digest=digest,
                size=size,
                labels=labels,
                created_at=now,
                updated_at=now,
            )
            session.add(row)
            return _info(row)

        return await self._db.run(add)

    async def update(
        self, namespace: str, digest: str, labels: dict[str, str], paths: list[str]
    ) -> ContentInfo:
        """Only labels can change: `labels`, `labels.<key>`, or no paths (replace all)."""
        for path in paths:
            if path != "labels" and not path.startswith("labels."):
                raise InvalidArgument(f"cannot update {path!r} field on content info {digest}")

        def update(session: Session) -> ContentInfo:
            self.cache.drop((namespace, digest))
            row = _get(session, namespace, digest)
            masked = validate.apply_label_mask(row.labels, labels, paths)
            row.labels = masked if masked is not None else validate.labels(labels)
            row.updated_at = datetime.now(UTC)
            return _info(row)

        return await self._db.run(update)

    async def list(self, namespace: str) -> list[ContentInfo]:
        def list_(session: Session) -> list[ContentInfo]:
            rows = session.scalars(
                select(ContentRow)
                .where(ContentRow.namespace == namespace)
                .order_by(ContentRow.digest)
            )
            return [_info(r) for r in rows]

        return await self._db.run(list_)

    async def delete(self, namespace: str, digest: str) -> None:
        def delete(session: Session) -> None:
            self.cache.drop((namespace, digest))
            session.delete(_get(session, namespace, digest))

        await self._db.run(delete)
