"""Typed ORM models. The schema itself is created by `migrations`; a test keeps both equal."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    ForeignKeyConstraint,
    String,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


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


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCTime, dict[str, str]: JSON}


class Meta(Base):
    """Daemon-wide key/value facts (the server uuid)."""

    __tablename__ = "meta"
    key: Mapped[str] = mapped_column(String, primary_key=True)
    value: Mapped[str]


class NamespaceRow(Base):
    __tablename__ = "namespaces"
    name: Mapped[str] = mapped_column(primary_key=True)
    labels: Mapped[dict[str, str]]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class LeaseRow(Base):
    __tablename__ = "leases"
    namespace: Mapped[str] = mapped_column(primary_key=True)
    id: Mapped[str] = mapped_column(primary_key=True)
    labels: Mapped[dict[str, str]]
    created_at: Mapped[datetime]
    __table_args__ = (ForeignKeyConstraint(["namespace"], ["namespaces.name"]),)


class LeaseResourceRow(Base):
    __tablename__ = "lease_resources"
    namespace: Mapped[str] = mapped_column(primary_key=True)
    lease_id: Mapped[str] = mapped_column(primary_key=True)
    type: Mapped[str] = mapped_column(primary_key=True)
    resource_id: Mapped[str] = mapped_column(primary_key=True)
    __table_args__ = (
        ForeignKeyConstraint(
            ["namespace", "lease_id"], ["leases.namespace", "leases.id"], ondelete="CASCADE"
        ),
    )


class ContentRow(Base):
    __tablename__ = "content"
    namespace: Mapped[str] = mapped_column(primary_key=True)
    digest: Mapped[str] = mapped_column(primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    labels: Mapped[dict[str, str]]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    __table_args__ = (ForeignKeyConstraint(["namespace"], ["namespaces.name"]),)


class SnapshotRow(Base):
    """A snapshot of one snapshotter in one namespace; `id` names its directory."""

    __tablename__ = "snapshots"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    snapshotter: Mapped[str]
    namespace: Mapped[str]
    key: Mapped[str]
    parent: Mapped[str | None]
    kind: Mapped[str]
    labels: Mapped[dict[str, str]]
    size: Mapped[int] = mapped_column(BigInteger)
    inodes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    __table_args__ = (
        UniqueConstraint("snapshotter", "namespace", "key"),
        ForeignKeyConstraint(["namespace"], ["namespaces.name"]),
    )


class ContainerRow(Base):
    __tablename__ = "containers"
    namespace: Mapped[str] = mapped_column(primary_key=True)
    id: Mapped[str] = mapped_column(primary_key=True)
    labels: Mapped[dict[str, str]]
    image: Mapped[str]
    runtime: Mapped[str]
    runtime_options_type: Mapped[str | None]
    runtime_options: Mapped[bytes | None]
    spec_type: Mapped[str]
    spec: Mapped[bytes]
    snapshotter: Mapped[str]
    snapshot_key: Mapped[str]
    sandbox: Mapped[str]
    # name -> [type URL, base64 value]
    extensions: Mapped[dict[str, list[str]]] = mapped_column(JSON)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    __table_args__ = (ForeignKeyConstraint(["namespace"], ["namespaces.name"]),)


class ImageRow(Base):
    __tablename__ = "images"
    namespace: Mapped[str] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(primary_key=True)
    media_type: Mapped[str]
    digest: Mapped[str]
    size: Mapped[int] = mapped_column(BigInteger)
    annotations: Mapped[dict[str, str]]
    labels: Mapped[dict[str, str]]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    __table_args__ = (ForeignKeyConstraint(["namespace"], ["namespaces.name"]),)
