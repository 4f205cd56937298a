"""Content records: which namespace knows which blob, with its labels."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Row, bindparam, delete, insert, select, update

from linerd.core import validate
from linerd.core.types import ContentInfo, LeaseResource
from linerd.errdefs import InvalidArgument, NotFound
from linerd.metadata.cache import RecordCache
from linerd.metadata.db import Database
from linerd.metadata.leases import add_resource_in
from linerd.metadata.models import content
from linerd.metadata.namespaces import ensure

_KEY = (content.c.namespace == bindparam("b_namespace")) & (
    content.c.digest == bindparam("b_digest")
)
# Built once: a pull records each blob, and ctr looks each one up again.
_GET = select(content).where(_KEY)
_INSERT = insert(content)


def _info(row: Row[Any]) -> ContentInfo:
    return ContentInfo(
        digest=row.digest,
        size=row.size,
        created_at=row.created_at,
        updated_at=row.updated_at,
        labels=dict(row.labels),
    )


def _row(conn: Connection, namespace: str, digest: str) -> Row[Any] | None:
    return conn.execute(_GET, {"b_namespace": namespace, "b_digest": digest}).first()


def _get(conn: Connection, namespace: str, digest: str) -> Row[Any]:
    row = _row(conn, namespace, digest)
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
        return await self._db.run(lambda c: self.cache.put(key, _info(_get(c, namespace, digest))))

    async def exists(self, namespace: str, digest: str) -> bool:
        return await self._db.run(lambda c: _row(c, namespace, digest) is not None)

    async def ensure_namespace(self, namespace: str) -> None:
        """A write is a mutating call: its namespace exists from the first STAT on."""
        await self._db.run(lambda c: ensure(c, namespace))

    async def add(
        self,
        namespace: str,
        digest: str,
        size: int,
        labels: dict[str, str],
        lease: str | None,
        change: Callable[[dict[str, str]], dict[str, str]] | None = None,
    ) -> ContentInfo | None:
        """Record a committed blob held by `lease`; None if this namespace had it already
        (the lease then holds it all the same, and `change`, if given, makes its labels of
        the current ones as in `change_labels`: a pull's second blob transaction saved)."""
        labels = validate.labels(labels)

        def add(conn: Connection) -> ContentInfo | None:
            self.cache.drop((namespace, digest))
            ensure(conn, namespace)
            if lease:
                add_resource_in(conn, namespace, lease, LeaseResource(id=digest, type="content"))
            row = _row(conn, namespace, digest)
            if row is not None:
                if change is not None:
                    new = validate.labels(change(dict(row.labels)))
                    if new != row.labels:
                        conn.execute(
                            update(content)
                            .where(_KEY)
                            .values(labels=new, updated_at=datetime.now(UTC)),
                            {"b_namespace": namespace, "b_digest": digest},
                        )
                return None
            now = datetime.now(UTC)
            conn.execute(
                _INSERT,
                {
                    "namespace": namespace,
                    "digest": digest,
                    "size": size,
                    "labels": labels,
                    "created_at": now,
                    "updated_at": now,
                },
            )
            info = ContentInfo(
                digest=digest, size=size, created_at=now, updated_at=now, labels=dict(labels)
            )
            # ctr asks Info of what it just wrote: answered without a transaction.
            Database.after_commit(conn, lambda: self.cache.put((namespace, digest), info))
            return _copy(info)

        return await self._db.run(add)

    async def update(
        self, namespace: str, digest: str, labels: dict[str, str], paths: list[str]
    ) -> ContentInfo:
        """Only labels can change: `labels`, `labels.<key>`, or no paths (replace all)."""
        for path in paths:
            if path != "labels" and not path.startswith("labels."):
                raise InvalidArgument(f"cannot update {path!r} field on content info {digest}")

        def update_(conn: Connection) -> ContentInfo:
            self.cache.drop((namespace, digest))
            row = _get(conn, namespace, digest)
            masked = validate.apply_label_mask(row.labels, labels, paths)
            new = masked if masked is not None else validate.labels(labels)
            now = datetime.now(UTC)
            conn.execute(
                update(content).where(_KEY).values(labels=new, updated_at=now),
                {"b_namespace": namespace, "b_digest": digest},
            )
            info = ContentInfo(
                digest=digest,
                size=row.size,
                created_at=row.created_at,
                updated_at=now,
                labels=dict(new),
            )
            Database.after_commit(conn, lambda: self.cache.put((namespace, digest), info))
            return _copy(info)

        return await self._db.run(update_)

    async def change_labels(
        self, namespace: str, digest: str, change: Callable[[dict[str, str]], dict[str, str]]
    ) -> ContentInfo:
        """Set the labels `change` makes of the current ones, in one transaction (a pull
        labels each blob it records); nothing is written when they stay the same. Called on
        the database thread: `change` must be quick and pure."""
        key = (namespace, digest)

        def change_(conn: Connection) -> ContentInfo:
            row = _get(conn, namespace, digest)
            new = validate.labels(change(dict(row.labels)))
            if new == row.labels:
                return self.cache.put(key, _info(row))
            self.cache.drop(key)
            now = datetime.now(UTC)
            conn.execute(
                update(content).where(_KEY).values(labels=new, updated_at=now),
                {"b_namespace": namespace, "b_digest": digest},
            )
            info = ContentInfo(
                digest=digest, size=row.size, created_at=row.created_at, updated_at=now,
                labels=new,
            )  # fmt: skip
            Database.after_commit(conn, lambda: self.cache.put(key, info))
            return _copy(info)

        return await self._db.run(change_)

    async def list(self, namespace: str) -> list[ContentInfo]:
        def list_(conn: Connection) -> list[ContentInfo]:
            rows = conn.execute(
                select(content).where(content.c.namespace == namespace).order_by(content.c.digest)
            )
            return [_info(r) for r in rows]

        return await self._db.run(list_)

    async def delete(self, namespace: str, digest: str) -> None:
        def delete_(conn: Connection) -> None:
            self.cache.drop((namespace, digest))
            key = {"b_namespace": namespace, "b_digest": digest}
            if conn.execute(delete(content).where(_KEY), key).rowcount == 0:
                raise NotFound(f"content digest {digest} not found")

        await self._db.run(delete_)
