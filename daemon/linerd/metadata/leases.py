"""Leases and the resources they hold (content, ingests, snapshots/<snapshotter>)."""

from __future__ import annotations

import secrets
import time
from datetime import UTC, datetime

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from linerd.core import validate
from linerd.core.types import Lease, LeaseResource
from linerd.errdefs import AlreadyExists, InvalidArgument, NotFound
from linerd.metadata.db import Database
from linerd.metadata.models import LeaseResourceRow, LeaseRow
from linerd.metadata.namespaces import ensure

EXPIRE_LABEL = "containerd.io/gc.expire"


def check_resource(resource: LeaseResource) -> LeaseResource:
    if not resource.id:
        raise InvalidArgument("lease resource id must not be empty")
    if resource.type == "content":
        validate.digest(resource.id)
    elif resource.type == "ingests" or (
        resource.type.startswith("snapshots/") and len(resource.type) > len("snapshots/")
    ):
        pass
    else:
        raise InvalidArgument(
            f"unsupported lease resource type {resource.type!r}: "
            "want content, ingests or snapshots/<snapshotter>"
        )
    return resource


def _lease(row: LeaseRow) -> Lease:
    return Lease(id=row.id, created_at=row.created_at, labels=dict(row.labels))


def _get(session: Session, namespace: str, lease_id: str) -> LeaseRow:
    row = session.get(LeaseRow, (namespace, lease_id))
    if row is None:
        raise NotFound(f"lease {lease_id!r} not found")
    return row


def add_resource_in(
    session: Session, namespace: str, lease_id: str, resource: LeaseResource
) -> None:
    """Record that `lease_id` holds `resource`, inside the caller's transaction."""
    _get(session, namespace, lease_id)
    key = (namespace, lease_id, resource.type, resource.id)
    if session.get(LeaseResourceRow, key) is None:
        session.add(
            LeaseResourceRow(
                namespace=namespace, lease_id=lease_id, type=resource.type, resource_id=resource.id
            )
        )


class LeaseStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(self, namespace: str, lease_id: str, labels: dict[str, str]) -> Lease:
        """An empty id gets a random one, as containerd's leases service does."""
        lease_id = validate.lease_id(lease_id or _random_id())
        labels = validate.labels(labels)
        if EXPIRE_LABEL in labels:
            parse_expire(labels[EXPIRE_LABEL])

        def create(session: Session) -> Lease:
            ensure(session, namespace)
            if session.get(LeaseRow, (namespace, lease_id)) is not None:
                raise AlreadyExists(f"lease {lease_id!r} already exists")
            row = LeaseRow(
                namespace=namespace, id=lease_id, labels=labels, created_at=datetime.now(UTC)
            )
            session.add(row)
            return _lease(row)

        return await self._db.run(create)

    async def delete(self, namespace: str, lease_id: str) -> None:
        def delete_(session: Session) -> None:
            session.delete(_get(session, namespace, lease_id))

        await self._db.run(delete_)

    async def list(self, namespace: str) -> list[Lease]:
        def list_(session: Session) -> list[Lease]:
            rows = session.scalars(
                select(LeaseRow).where(LeaseRow.namespace == namespace).order_by(LeaseRow.id)
            )
            return [_lease(r) for r in rows]

        return await self._db.run(list_)

    async def add_resource(self, namespace: str, lease_id: str, resource: LeaseResource) -> None:
        check_resource(resource)
        await self._db.run(lambda s: add_resource_in(s, namespace, lease_id, resource))

    async def delete_resource(self, namespace: str, lease_id: str, resource: LeaseResource) -> None:
        check_resource(resource)

        def delete_resource(session: Session) -> None:
            _get(session, namespace, lease_id)
            session.execute(
                delete(LeaseResourceRow).where(
                    LeaseResourceRow.namespace == namespace,
                    LeaseResourceRow.lease_id == lease_id,
                    LeaseResourceRow.type == resource.type,
                    LeaseResourceRow.resource_id == resource.id,
                )
            )

        await self._db.run(delete_resource)

    async def list_resources(self, namespace: str, lease_id: str) -> list[LeaseResource]:
        def list_resources(session: Session) -> list[LeaseResource]:
            _get(session, namespace, lease_id)
            rows = session.scalars(
                select(LeaseResourceRow)
                .where(
                    LeaseResourceRow.namespace == namespace,
                    LeaseResourceRow.lease_id == lease_id,
                )
                .order_by(LeaseResourceRow.type, LeaseResourceRow.resource_id)
            )
            return [LeaseResource(id=r.resource_id, type=r.type) for r in rows]

        return await self._db.run(list_resources)


def _random_id() -> str:
    return f"{time.time_ns()}-{secrets.token_hex(3)}"


def parse_expire(value: str) -> datetime:
    """`containerd.io/gc.expire` holds an RFC 3339 time."""
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as e:
        raise InvalidArgument(f"label {EXPIRE_LABEL}={value!r} is not an RFC 3339 time") from e
    return when if when.tzinfo else when.replace(tzinfo=UTC)
