"""Namespaces: created implicitly by the first mutating call in them, deleted only when empty."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy import exists, select
from sqlalchemy.orm import Session

from linerd.core import validate
from linerd.core.types import Namespace
from linerd.errdefs import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from linerd.metadata.cache import RecordCache
from linerd.metadata.db import Database
from linerd.metadata.models import ContentRow, ImageRow, LeaseRow, NamespaceRow

# What keeps a namespace from being deleted: name -> does this namespace have any?
EmptinessCheck = Callable[[Session, str], bool]


def ensure(session: Session, name: str) -> None:
    """Create the namespace row if missing, inside the caller's transaction."""
    if session.get(NamespaceRow, name) is None:
        now = datetime.now(UTC)
        session.add(NamespaceRow(name=name, labels={}, created_at=now, updated_at=now))
        session.flush()


def _has(model: type) -> EmptinessCheck:
    def check(session: Session, name: str) -> bool:
        return bool(session.scalar(select(exists().where(model.namespace == name))))  # type: ignore[attr-defined]

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
            "images": _has(ImageRow),
            "blobs": _has(ContentRow),
            "leases": _has(LeaseRow),
        }

    def register_holder(self, what: str, check: EmptinessCheck) -> None:
        self._holders[what] = check

    async def list(self) -> list[Namespace]:
        return await self._db.run(
            lambda s: [
                Namespace(name=row.name, labels=dict(row.labels))
                for row in s.scalars(select(NamespaceRow).order_by(NamespaceRow.name))
            ]
        )

    async def get(self, name: str) -> Namespace:
        """An unknown (valid) name answers with no labels, as containerd's does; none is made."""
        validate.identifier(name, "namespace")

        if (hit := self._cache.get(name)) is not None:
            return hit

        def get(session: Session) -> Namespace:
            row = session.get(NamespaceRow, name)
            labels = dict(row.labels) if row else {}
            return self._cache.put(name, Namespace(name=name, labels=labels))

        return await self._db.run(get)

    async def create(self, name: str, labels: dict[str, str]) -> Namespace:
        validate.identifier(name, "namespace")
        labels = validate.labels(labels)

        def create(session: Session) -> Namespace:
            self._cache.drop(name)
            if session.get(NamespaceRow, name) is not None:
                raise AlreadyExists(f"namespace {name!r} already exists")
            now = datetime.now(UTC)
            session.add(NamespaceRow(name=name, labels=labels, created_at=now, updated_at=now))
            return Namespace(name=name, labels=labels)

        return await self._db.run(create)

    async def update(self, name: str, labels: dict[str, str], paths: list[str]) -> Namespace:
        """No paths replaces all labels; `labels` and `labels.<key>` paths as in containerd."""
        validate.identifier(name, "namespace")
        for path in paths:
            if path != "labels" and not path.startswith("labels."):
                raise InvalidArgument(f"cannot update {path!r} field of namespace {name!r}")

        def update(session: Session) -> Namespace:
            self._cache.drop(name)
            ensure(session, name)
            row = session.get(NamespaceRow, name)
            assert row is not None
            masked = validate.apply_label_mask(row.labels, labels, paths)
            row.labels = masked if masked is not None else validate.labels(labels)
            row.updated_at = datetime.now(UTC)
            return Namespace(name=name, labels=dict(row.labels))

        return await self._db.run(update)

    async def delete(self, name: str) -> None:
        validate.identifier(name, "namespace")

        def delete(session: Session) -> None:
            self._cache.drop(name)
            row = session.get(NamespaceRow, name)
            if row is None:
                raise NotFound(f"namespace {name!r} not found")
            held = [what for what, check in self._holders.items() if check(session, name)]
            if held:
                raise FailedPrecondition(
                    f"namespace {name!r} must be empty, but it still has {', '.join(held)}"
                )
            session.delete(row)

        await self._db.run(delete)
