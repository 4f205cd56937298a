"""The tables, in SQLAlchemy Core. The schema itself is created by `migrations`; a test keeps
both equal. Core, not the ORM: importing `sqlalchemy.orm` costs ~6 MB and its unit of work
several milliseconds per write transaction (docs/PERFORMANCE.md)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    ForeignKeyConstraint,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    TypeDecorator,
    UniqueConstraint,
)


class UTCTime(TypeDecorator[datetime]):
    """Aware UTC datetimes stored as integer microseconds: exact, sortable, portable."""

    impl = BigInteger
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> int | None:
        if value is None:
            return None
        delta = value.astimezone(UTC) - _EPOCH
        return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds

    def process_result_value(self, value: int | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return datetime.fromtimestamp(value // 1_000_000, UTC).replace(
            microsecond=value % 1_000_000
        )


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

metadata = MetaData()


def _text(name: str, *, primary_key: bool = False, nullable: bool = False) -> Column[str]:
    return Column(name, String, primary_key=primary_key, nullable=nullable)


def _labels(name: str = "labels") -> Column[Any]:
    # JSON text, as the ORM's dict[str, str] -> JSON mapping stored it.
    return Column(name, JSON, nullable=False)


def _time(name: str) -> Column[datetime]:
    return Column(name, UTCTime, nullable=False)


# Daemon-wide key/value facts (the server uuid).
meta = Table("meta", metadata, _text("key", primary_key=True), _text("value"))

namespaces = Table(
    "namespaces",
    metadata,
    _text("name", primary_key=True),
    _labels(),
    _time("created_at"),
    _time("updated_at"),
)

leases = Table(
    "leases",
    metadata,
    _text("namespace", primary_key=True),
    _text("id", primary_key=True),
    _labels(),
    _time("created_at"),
    ForeignKeyConstraint(["namespace"], ["namespaces.name"]),
)

lease_resources = Table(
    "lease_resources",
    metadata,
    _text("namespace", primary_key=True),
    _text("lease_id", primary_key=True),
    _text("type", primary_key=True),
    _text("resource_id", primary_key=True),
    ForeignKeyConstraint(
        ["namespace", "lease_id"], ["leases.namespace", "leases.id"], ondelete="CASCADE"
    ),
)

content = Table(
    "content",
    metadata,
    _text("namespace", primary_key=True),
    _text("digest", primary_key=True),
    Column("size", BigInteger, nullable=False),
    _labels(),
    _time("created_at"),
    _time("updated_at"),
    ForeignKeyConstraint(["namespace"], ["namespaces.name"]),
)

# A snapshot of one snapshotter in one namespace; `id` names its directory.
snapshots = Table(
    "snapshots",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    _text("snapshotter"),
    _text("namespace"),
    _text("key"),
    _text("parent", nullable=True),
    _text("kind"),
    _labels(),
    Column("size", BigInteger, nullable=False),
    Column("inodes", BigInteger, nullable=False),
    _time("created_at"),
    _time("updated_at"),
    UniqueConstraint("snapshotter", "namespace", "key"),
    ForeignKeyConstraint(["namespace"], ["namespaces.name"]),
)

containers = Table(
    "containers",
    metadata,
    _text("namespace", primary_key=True),
    _text("id", primary_key=True),
    _labels(),
    _text("image"),
    _text("runtime"),
    _text("runtime_options_type", nullable=True),
    Column("runtime_options", LargeBinary, nullable=True),
    _text("spec_type"),
    Column("spec", LargeBinary, nullable=False),
    _text("snapshotter"),
    _text("snapshot_key"),
    _text("sandbox"),
    # name -> [type URL, base64 value]
    _labels("extensions"),
    _time("created_at"),
    _time("updated_at"),
    ForeignKeyConstraint(["namespace"], ["namespaces.name"]),
)

images = Table(
    "images",
    metadata,
    _text("namespace", primary_key=True),
    _text("name", primary_key=True),
    _text("media_type"),
    _text("digest"),
    Column("size", BigInteger, nullable=False),
    _labels("annotations"),
    _labels(),
    _time("created_at"),
    _time("updated_at"),
    ForeignKeyConstraint(["namespace"], ["namespaces.name"]),
)
