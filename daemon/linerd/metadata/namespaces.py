"""Namespaces: created implicitly by the first mutating call in them, deleted only when empty."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy import Connection, Table, bindparam, delete, exists, insert, select, update

from linerd.core import validate
from linerd.core.types import Namespace
from linerd.errdefs import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from linerd.metadata.cache import RecordCache
from linerd.metadata.db import Database
from linerd.metadata.models import content, images, leases, namespaces

# What keeps a namespace from being deleted: name -> does this namespace have any?
EmptinessCheck = Callable[[Connection, str], bool]

# Built once: every write transaction starts with `ensure`.
_LABELS = select(namespaces.c.labels).where(namespaces.c.name == bindparam("b_name"))
_INSERT = insert(namespaces)


def ensure(conn: Connection, name: str) -> None:
    """Create the namespace row if missing, inside the caller's transaction."""
    if conn.execute(_LABELS, {"b_name": name}).first() is None:
        now = datetime.now(UTC)
        conn.execute(_INSERT, {"name": name, "labels": {}, "created_at": now, "updated_at": now})


def _labels(conn: Connection, name: str) -> dict[str, str] | None:
    row = conn.execute(_LABELS, {"b_name": name}).first()
    return None if row is None else dict(row.labels)


def _has(table: Table) -> EmptinessCheck:
    def check(conn: Connection, name: str) -> bool:
        return bool(conn.scalar(select(exists().where(table.c.namespace == name))))

    return check


class NamespaceStore:
    def __init__(self, db: Database) -> None:
        self._db = db
        # Get answers only labels, and {} alike for a missing row and one `ensure` made, so
        # only create/update/delete here change an answer (ctr asks twice per `run`).
        self._cache: RecordCache[str, Namespace] = RecordCache(
            lambda n: Namespace(name=n.name, labels=dict(n.labels))
        )
        # Other parts (snapshots, containers, ingests) register what they hold.
        self._holders: dict[str, EmptinessCheck] = {
            "images": _has(images),
            "blobs": _has(content),
            "leases": _has(leases),
        }

    def register_holder(self, what: str, check: EmptinessCheck) -> None:
        self._holders[what] = check

    async def list(self) -> list[Namespace]:
        return await self._db.run(
            lambda c: [
                Namespace(name=row.name, labels=dict(row.labels))
                for row in c.execute(
                    select(namespaces.c.name, namespaces.c.labels).order_by(namespaces.c.name)
                )
            ]
        )

    async def get(self, name: str) -> Namespace:
        """An unknown (valid) name answers with no labels, as containerd's does; none is made."""
        validate.identifier(name, "namespace")

        if (hit := self._cache.get(name)) is not None:
            return hit

        def get(conn: Connection) -> Namespace:
            labels = _labels(conn, name) or {}
            return self._cache.put(name, Namespace(name=name, labels=labels))

        return await self._db.run(get)

    async def create(self, name: str, labels: dict[str, str]) -> Namespace:
        validate.identifier(name, "namespace")
        labels = validate.labels(labels)

        def create(conn: Connection) -> Namespace:
            self._cache.drop(name)
            if _labels(conn, name) is not None:
                raise AlreadyExists(f"namespace {name!r} already exists")
            now = datetime.now(UTC)
            conn.execute(
                _INSERT, {"name": name, "labels": labels, "created_at": now, "updated_at": now}
            )
            return Namespace(name=name, labels=labels)

        return await self._db.run(create)

    async def update(self, name: str, labels: dict[str, str], paths: list[str]) -> Namespace:
        """No paths replaces all labels; `labels` and `labels.<key>` paths as in containerd."""
        validate.identifier(name, "namespace")
        for path in paths:
            if path != "labels" and not path.startswith("labels."):
                raise InvalidArgument(f"cannot update {path!r} field of namespace {name!r}")

        def update_(conn: Connection) -> Namespace:
            self._cache.drop(name)
            ensure(conn, name)
            current = _labels(conn, name)
            assert current is not None
            masked = validate.apply_label_mask(current, labels, paths)
            new = masked if masked is not None else validate.labels(labels)
            conn.execute(
                update(namespaces)
                .where(namespaces.c.name == name)
                .values(labels=new, updated_at=datetime.now(UTC))
            )
            return Namespace(name=name, labels=dict(new))

        return await self._db.run(update_)

    async def delete(self, name: str) -> None:
        validate.identifier(name, "namespace")

        def delete_(conn: Connection) -> None:
            self._cache.drop(name)
            if _labels(conn, name) is None:
                raise NotFound(f"namespace {name!r} not found")
            held = [what for what, check in self._holders.items() if check(conn, name)]
            if held:
                raise FailedPrecondition(
                    f"namespace {name!r} must be empty, but it still has {', '.join(held)}"
                )
            conn.execute(delete(namespaces).where(namespaces.c.name == name))

        await self._db.run(delete_)
