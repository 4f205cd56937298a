"""Value types of the execution layer (no gRPC, no SQL)."""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True, slots=True)
class RuntimeConfig:
    """An OCI runtime: any runc-compatible executable plus global args placed before the command.

    `name` keys the runtime's state dir (`<state>/runtime/<name>/<namespace>`); it defaults to
    the executable's file name.
    """

    path: str
    args: tuple[str, ...] = ()
    name: str = ""

    @property
    def key(self) -> str:
        return self.name or os.path.basename(self.path) or "runtime"


class TaskStatus(enum.Enum):
    """Mirrors containerd's task status enum (values as in containerd.v1.types.Status)."""

    UNKNOWN = 0
    CREATED = 1
    RUNNING = 2
    STOPPED = 3
    PAUSED = 4
    PAUSING = 5


@dataclass(slots=True)
class ProcessState:
    """The observable state of a task's init process (`exec_id == ""`) or of an exec."""

    namespace: str
    container_id: str
    exec_id: str
    pid: int
    status: TaskStatus
    exit_status: int = 0
    exited_at: datetime | None = None
    stdin: str = ""
    stdout: str = ""
    stderr: str = ""
    terminal: bool = False
    # The monitor (conmon) died without writing an exit file: the exit code is unknown and
    # reported as 255. The process itself may even still run; delete() then kills it.
    monitor_lost: bool = False


@dataclass(frozen=True, slots=True)
class ExitInfo:
    pid: int
    exit_status: int
    exited_at: datetime


@dataclass(frozen=True, slots=True)
class PidInfo:
    pid: int
    exec_id: str = ""  # set when the pid is the main process of an exec


@dataclass(slots=True)
class TaskMetrics:
    """cgroup v1 numbers of a task (the fields of containerd's cgroups v1 Metrics we fill)."""

    cpu_usage_ns: int = 0
    cpu_user_ns: int = 0
    cpu_kernel_ns: int = 0
    per_cpu_ns: list[int] = field(default_factory=list)
    memory_usage: int = 0
    memory_max_usage: int = 0
    memory_limit: int = 0
    memory_failcnt: int = 0
    memory_stat: dict[str, int] = field(default_factory=dict)
    pids_current: int = 0
    pids_limit: int = 0  # 0 = unlimited ("max")
