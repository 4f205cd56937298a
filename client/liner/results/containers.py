"""What the client returns for containers, tasks, processes and events."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum


class TaskStatus(StrEnum):
    """containerd's task states; the value is the lower-case name ctr prints."""

    UNKNOWN = "unknown"
    CREATED = "created"
    RUNNING = "running"
    STOPPED = "stopped"
    PAUSED = "paused"
    PAUSING = "pausing"


@dataclass(frozen=True, slots=True)
class AnyValue:
    """A protobuf Any as the daemon stores it: a type URL and the encoded bytes."""

    type_url: str
    value: bytes


@dataclass(frozen=True, slots=True)
class Container:
    id: str
    image: str = ""
    runtime: str = ""
    runtime_options: AnyValue | None = None
    spec: AnyValue | None = None
    labels: dict[str, str] = field(default_factory=dict)
    snapshotter: str = ""
    snapshot_key: str = ""
    created_at: datetime | None = None
    updated_at: datetime | None = None
    extensions: dict[str, AnyValue] = field(default_factory=dict)
    sandbox: str = ""


@dataclass(frozen=True, slots=True)
class Process:
    """A task (id = container id) or an exec process (id = exec id) as Tasks/Get reports it."""

    container_id: str
    id: str
    pid: int
    status: TaskStatus
    stdin: str = ""
    stdout: str = ""
    stderr: str = ""
    terminal: bool = False
    exit_status: int = 0
    exited_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class ExitStatus:
    status: int
    exited_at: datetime | None
    pid: int = 0
    id: str = ""


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    pid: int
    exec_id: str = ""  # from the runc ProcessDetails in the info, when there is one


@dataclass(frozen=True, slots=True)
class Metric:
    id: str
    timestamp: datetime | None
    data: AnyValue | None


@dataclass(frozen=True, slots=True)
class Event:
    """One envelope from Events/Subscribe; `payload` is the event decoded to JSON-able form
    (None when its type URL is not one liner knows)."""

    timestamp: datetime | None
    timestamp_text: str  # RFC 3339 with nanoseconds
    namespace: str
    topic: str
    type_url: str
    value: bytes
    payload: dict[str, object] | None
