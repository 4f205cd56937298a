"""Domain types shared by the core, the metadata layer and the services (no gRPC, no SQL)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime


@dataclass(slots=True)
class Namespace:
    name: str
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class Lease:
    id: str
    created_at: datetime
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class LeaseResource:
    """A resource held by a lease: type is "content", "ingests" or "snapshots/<snapshotter>"."""

    id: str
    type: str


@dataclass(slots=True)
class ContentInfo:
    digest: str
    size: int
    created_at: datetime
    updated_at: datetime
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class IngestStatus:
    ref: str
    offset: int
    total: int
    expected: str
    started_at: datetime
    updated_at: datetime


@dataclass(slots=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class Image:
    name: str
    target: Descriptor
    labels: dict[str, str] = field(default_factory=dict)
    created_at: datetime | None = None
    updated_at: datetime | None = None


class SnapshotKind(enum.Enum):
    VIEW = "view"
    ACTIVE = "active"
    COMMITTED = "committed"


@dataclass(slots=True)
class SnapshotInfo:
    name: str
    kind: SnapshotKind
    parent: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    created_at: datetime | None = None
    updated_at: datetime | None = None


@dataclass(slots=True)
class Usage:
    size: int = 0
    inodes: int = 0


@dataclass(frozen=True, slots=True)
class Mount:
    """A mount as the API carries it: mount(2) type, source and options (target is unused)."""

    type: str
    source: str
    options: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Encoded:
    """A typed value kept verbatim (a protobuf Any's type URL and bytes): specs and runtime
    options are stored as clients sent them, since ctr decodes them again."""

    type_url: str
    value: bytes


@dataclass(slots=True)
class Container:
    id: str
    runtime: str
    spec: Encoded | None
    runtime_options: Encoded | None = None
    image: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    snapshotter: str = ""
    snapshot_key: str = ""
    sandbox: str = ""
    extensions: dict[str, Encoded] = field(default_factory=dict)
    created_at: datetime | None = None
    updated_at: datetime | None = None

    def copy(self) -> Container:
        """A copy whose labels and extensions may change apart from this one's. Spelled
        out: a List copies every record, and dataclasses.replace (fields() each call) or
        copy.copy (__reduce_ex__ on a slots class) cost 8-30 times as much."""
        return Container(
            id=self.id,
            runtime=self.runtime,
            spec=self.spec,
            runtime_options=self.runtime_options,
            image=self.image,
            labels=dict(self.labels),
            snapshotter=self.snapshotter,
            snapshot_key=self.snapshot_key,
            sandbox=self.sandbox,
            extensions=dict(self.extensions),
            created_at=self.created_at,
            updated_at=self.updated_at,
        )
