"""What the client returns for content, images and pulls."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True, slots=True)
class ContentInfo:
    digest: str
    size: int
    created_at: datetime | None
    updated_at: datetime | None
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class IngestStatus:
    ref: str
    offset: int
    total: int
    expected: str
    started_at: datetime | None
    updated_at: datetime | None


@dataclass(frozen=True, slots=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Image:
    name: str
    target: Descriptor
    labels: dict[str, str] = field(default_factory=dict)
    created_at: datetime | None = None
    updated_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class BlobProgress:
    descriptor: Descriptor
    offset: int
    # a pull's: "waiting", "downloading", "downloaded", "exists", "unpacking", "unpacked",
    # "failed"; a push's: "waiting", "uploading", "exists", "mounted", "done"
    state: str


@dataclass(frozen=True, slots=True)
class PullProgress:
    """One update of a pull: every blob so far; the last one has `done`, `name` and `target`."""

    blobs: list[BlobProgress]
    name: str = ""
    target: Descriptor | None = None
    done: bool = False


@dataclass(frozen=True, slots=True)
class PushProgress:
    """One update of a push: every blob so far (states "waiting", "uploading", "exists",
    "mounted", "done"); the last one has `done`, and `name` and `target` of what was pushed."""

    blobs: list[BlobProgress]
    name: str = ""
    target: Descriptor | None = None
    done: bool = False


@dataclass(frozen=True, slots=True)
class PolicyVerdict:
    """The daemon's signature policy on an image at its registry (`liner images verify`)."""

    accepted: bool
    requirement: str  # the requirement that decided, in words
    reason: str
    scope: str
    name: str  # the reference as resolved
    digest: str  # its manifest or index
    policy: bool  # False: linerd has no policy, every image is accepted
    policy_generation: int
