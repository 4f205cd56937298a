"""Leases and the resources they hold (content, ingests, snapshots/<snapshotter>)."""

from __future__ import annotations

import secrets
import time
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Row, bindparam, delete, insert, select

from liner_common.labels import GC_EXPIRE as EXPIRE_LABEL
from linerd.core import validate
from linerd.core.types import Lease, LeaseResource
from linerd.errdefs import AlreadyExists, InvalidArgument, NotFound
from linerd.metadata.db import Database
from linerd.metadata.models import lease_resources, leases
from linerd.metadata.namespaces import ensure


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


# Built once: leases are looked up in every write a leased client (ctr run, pull) makes.
_GET = select(leases).where(
    leases.c.namespace == bindparam("b_namespace"), leases.c.id == bindparam("b_id")
)
_INSERT = insert(leases)
_RESOURCE_KEY = (
    (lease_resources.c.namespace == bindparam("namespace"))
    & (lease_resources.c.lease_id == bindparam("lease_id"))
    & (lease_resources.c.type == bindparam("type"))
    & (lease_resources.c.resource_id == bindparam("resource_id"))
)
_HAS_RESOURCE = select(lease_resources.c.namespace).where(_RESOURCE_KEY)
_INSERT_RESOURCE = insert(lease_resources)
_DELETE_RESOURCE = delete(lease_resources).where(_RESOURCE_KEY)


def _lease(row: Row[Any]) -> Lease:
    return Lease(id=row.id, created_at=row.created_at, labels=dict(row.labels))


def _get(conn: Connection, namespace: str, lease_id: str) -> Row[Any]:
    row = conn.execute(_GET, {"b_namespace": namespace, "b_id": lease_id}).first()
    if row is None:
        raise NotFound(f"lease {lease_id!r} not found")
    return row


def _resource_key(namespace: str, lease_id: str, resource: LeaseResource) -> dict[str, str]:
    return {
        "namespace": namespace,
        "lease_id": lease_id,
        "type": resource.type,
        "resource_id": resource.id,
    }


def add_resource_in(
    conn: Connection, namespace: str, lease_id: str, resource: LeaseResource
) -> None:
    """Record that `lease_id` holds `resource`, inside the caller's transaction."""
    _get(conn, namespace, lease_id)
    key = _resource_key(namespace, lease_id, resource)
    if conn.execute(_HAS_RESOURCE, key).first() is None:
        conn.execute(_INSERT_RESOURCE, key)


class LeaseStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(self, namespace: str, lease_id: str, labels: dict[str, str]) -> Lease:
        """An empty id gets a random one, as containerd's leases service does."""
        lease_id = validate.lease_id(lease_id or _random_id())
        labels = validate.labels(labels)
        if EXPIRE_LABEL in labels:
            parse_expire(labels[EXPIRE_LABEL])

        def create(conn: Connection) -> Lease:
            ensure(conn, namespace)
            if conn.execute(_GET, {"b_namespace": namespace, "b_id": lease_id}).first():
                raise AlreadyExists(f"lease {lease_id!r} already exists")
            now = datetime.now(UTC)
            conn.execute(
                _INSERT,
                {"namespace": namespace, "id": lease_id, "labels": labels, "created_at": now},
            )
            return Lease(id=lease_id, created_at=now, labels=dict(labels))

        return await self._db.run(create)

    async def delete(self, namespace: str, lease_id: str) -> None:
        def delete_(conn: Connection) -> None:
            doomed = delete(leases).where(leases.c.namespace == namespace, leases.c.id == lease_id)
            if conn.execute(doomed).rowcount == 0:
                raise NotFound(f"lease {lease_id!r} not found")

        await self._db.run(delete_)

    async def list(self, namespace: str) -> list[Lease]:
        def list_(conn: Connection) -> list[Lease]:
            rows = conn.execute(
                select(leases).where(leases.c.namespace == namespace).order_by(leases.c.id)
            )
            return [_lease(r) for r in rows]

        return await self._db.run(list_)

    async def add_resource(self, namespace: str, lease_id: str, resource: LeaseResource) -> None:
        check_resource(resource)
        await self._db.run(lambda s: add_resource_in(s, namespace, lease_id, resource))

    async def delete_resource(self, namespace: str, lease_id: str, resource: LeaseResource) -> None:
        check_resource(resource)

        def delete_resource(conn: Connection) -> None:
            _get(conn, namespace, lease_id)
            conn.execute(_DELETE_RESOURCE, _resource_key(namespace, lease_id, resource))

        await self._db.run(delete_resource)

    async def list_resources(self, namespace: str, lease_id: str) -> list[LeaseResource]:
        def list_resources(conn: Connection) -> list[LeaseResource]:
            _get(conn, namespace, lease_id)
            t = lease_resources.c
            rows = conn.execute(
                select(t.resource_id, t.type)
                .where(t.namespace == namespace, t.lease_id == lease_id)
                .order_by(t.type, t.resource_id)
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
