"""Tasks: a container's processes through the runtime.

Here live what every caller gets: the rootfs (the container's snapshot unless mounts are
given) and runtime resolution, the task events, and their order: an exit seen while the
Start of that process is in flight is published after /tasks/start (/tasks/exec-started), as
containerd's shim guarantees (a fast process can exit before `runtime start` returns).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from google.protobuf.message import DecodeError
from google.protobuf.timestamp_pb2 import Timestamp

from liner_api.containerd.events import task_pb2 as events
from liner_api.containerd.runc.v1 import options_pb2
from liner_api.containerd.types import mount_pb2
from linerd.core.types import Container, Mount
from linerd.errdefs import InvalidArgument, NotFound, NotImplementedYet
from linerd.runtime import (
    ExitInfo,
    PidInfo,
    ProcessState,
    RuntimeConfig,
    TaskMetrics,
    TaskRuntime,
    TaskStatus,
)

if TYPE_CHECKING:
    from linerd.local.events import Publisher
    from linerd.metadata.containers import ContainerStore
    from linerd.runtime.resolve import Runtimes
    from linerd.snapshots.store import SnapshotStore

RUNC_OPTIONS = "containerd.runc.v1.Options"
_ACTIVE = (TaskStatus.RUNNING, TaskStatus.PAUSED, TaskStatus.CREATED)


@dataclass(frozen=True, slots=True)
class Stdio:
    """Where a process's standard streams go (FIFO paths or URIs), as the caller names them."""

    stdin: str = ""
    stdout: str = ""
    stderr: str = ""
    terminal: bool = False


def _ts(value: datetime | None) -> Timestamp:
    ts = Timestamp()
    if value is not None:
        ts.FromDatetime(value.astimezone(UTC))
    return ts


def _json(value: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(value)
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidArgument(f"{what} is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise InvalidArgument(f"{what} is not a JSON object")
    return doc


class Tasks:
    def __init__(
        self,
        runtime: TaskRuntime,
        runtimes: Runtimes,
        containers: ContainerStore,
        snapshots: dict[str, SnapshotStore],
        publisher: Publisher,
    ) -> None:
        self.runtime = runtime
        self._runtimes = runtimes
        self._containers = containers
        self._snapshots = snapshots
        self._publisher = publisher
        # Exits held back while a Start of that process is in flight, by (ns, id, exec id).
        self._starting: dict[tuple[str, str, str], list[events.TaskExit]] = {}
        runtime.on_exit(self._exited)
        runtime.on_oom(self._oom)

    def _exited(
        self,
        namespace: str,
        container_id: str,
        exec_id: str,
        pid: int,
        status: int,
        exited_at: datetime,
    ) -> None:
        event = events.TaskExit(
            container_id=container_id,
            id=exec_id or container_id,
            pid=pid,
            exit_status=status,
            exited_at=_ts(exited_at),
        )
        held = self._starting.get((namespace, container_id, exec_id))
        if held is not None:
            held.append(event)
        else:
            self._publisher.publish(namespace, "/tasks/exit", event)

    def _oom(self, namespace: str, container_id: str) -> None:
        self._publisher.publish(namespace, "/tasks/oom", events.TaskOOM(container_id=container_id))

    async def _rootfs(self, namespace: str, container: Container) -> list[Mount]:
        if not container.snapshot_key:
            return []
        store = self._snapshots.get(container.snapshotter)
        if store is None:
            raise InvalidArgument(f"snapshotter {container.snapshotter!r} is not loaded")
        return await store.mounts(namespace, container.snapshot_key)

    def _runtime_for(self, container: Container, runtime_path: str) -> RuntimeConfig:
        runc = options_pb2.Options()
        options = container.runtime_options
        if options is not None and options.type_url == RUNC_OPTIONS and options.value:
            try:
                runc = options_pb2.Options.FromString(options.value)
            except DecodeError as e:
                raise InvalidArgument(f"invalid runc options: {e}") from None
        return self._runtimes.resolve(
            container.runtime,
            runc.binary_name,
            runtime_path,
            systemd_cgroup=runc.systemd_cgroup,
        )

    async def create(
        self,
        namespace: str,
        container_id: str,
        stdio: Stdio,
        rootfs: list[Mount] | None = None,
        runtime_path: str = "",
        checkpoint: str = "",
        *,
        log_path: str = "",
        stdin_pipe: bool = False,
        stdin_once: bool = False,
    ) -> int:
        """Create the task (not started); returns its pid. Without `rootfs`, the container's
        snapshot is mounted. `log_path`: the output goes to that file in the CRI log format
        (the CRI's containers; see TaskRuntime.create)."""
        if checkpoint:
            raise NotImplementedYet("restoring from a checkpoint is not supported")
        container = await self._containers.get(namespace, container_id)
        assert container.spec is not None
        spec = _json(container.spec.value, f"spec of container {container.id!r}")
        mounts = rootfs if rootfs else await self._rootfs(namespace, container)
        runtime = self._runtime_for(container, runtime_path)
        pid = await self.runtime.create(
            namespace,
            container.id,
            spec,
            mounts,
            stdio.stdin,
            stdio.stdout,
            stdio.stderr,
            stdio.terminal,
            runtime,
            log_path=log_path,
            stdin_pipe=stdin_pipe,
            stdin_once=stdin_once,
        )
        self._publisher.publish(
            namespace,
            "/tasks/create",
            events.TaskCreate(
                container_id=container.id,
                bundle=str(self.runtime.bundle_dir(namespace, container.id)),
                rootfs=[
                    mount_pb2.Mount(type=m.type, source=m.source, options=m.options) for m in mounts
                ],
                io=events.TaskIO(
                    stdin=stdio.stdin,
                    stdout=stdio.stdout,
                    stderr=stdio.stderr,
                    terminal=stdio.terminal,
                ),
                pid=pid,
            ),
        )
        return pid

    async def start(self, namespace: str, container_id: str, exec_id: str = "") -> int:
        """Start the task's init process (or exec `exec_id`); returns its pid."""
        key = (namespace, container_id, exec_id)
        owner = key not in self._starting
        if owner:
            self._starting[key] = []
        try:
            if exec_id:
                pid = await self.runtime.start_exec(namespace, container_id, exec_id)
                self._publisher.publish(
                    namespace,
                    "/tasks/exec-started",
                    events.TaskExecStarted(container_id=container_id, exec_id=exec_id, pid=pid),
                )
            else:
                pid = await self.runtime.start(namespace, container_id)
                self._publisher.publish(
                    namespace,
                    "/tasks/start",
                    events.TaskStart(container_id=container_id, pid=pid),
                )
        finally:
            if owner:
                for event in self._starting.pop(key):
                    self._publisher.publish(namespace, "/tasks/exit", event)
        return pid

    async def delete(self, namespace: str, container_id: str) -> ExitInfo:
        info = await self.runtime.delete(namespace, container_id)
        self._publisher.publish(
            namespace,
            "/tasks/delete",
            events.TaskDelete(
                container_id=container_id,
                id=container_id,
                pid=info.pid,
                exit_status=info.exit_status,
                exited_at=_ts(info.exited_at),
            ),
        )
        return info

    async def delete_process(self, namespace: str, container_id: str, exec_id: str) -> ExitInfo:
        if not exec_id:
            raise InvalidArgument("exec id is required: use Delete for the task itself")
        return await self.runtime.delete_exec(namespace, container_id, exec_id)

    def state(self, namespace: str, container_id: str, exec_id: str = "") -> ProcessState:
        return self.runtime.state(namespace, container_id, exec_id)

    def status(self, namespace: str, container_id: str) -> TaskStatus:
        """The task's status alone (NotFound without a task): cheaper than `state`."""
        return self.runtime.status(namespace, container_id)

    def list(self, namespace: str) -> list[ProcessState]:
        return self.runtime.list_tasks(namespace)

    async def kill(
        self,
        namespace: str,
        container_id: str,
        signal: int,
        exec_id: str = "",
        all: bool = False,
    ) -> None:
        if exec_id:
            await self.runtime.kill_exec(namespace, container_id, exec_id, signal)
        else:
            await self.runtime.kill(namespace, container_id, signal, all)

    async def exec(
        self,
        namespace: str,
        container_id: str,
        exec_id: str,
        spec: bytes,
        stdio: Stdio,
        *,
        direct: bool = False,
    ) -> None:
        """Add exec `exec_id` (process spec as JSON); `start` runs it. `direct`: the caller
        waits for it (ExecSync), so it runs without a monitor (TaskRuntime.exec)."""
        if not exec_id:
            raise InvalidArgument("exec id must not be empty")
        process = _json(spec, "exec process spec")
        await self.runtime.exec(
            namespace,
            container_id,
            exec_id,
            process,
            stdio.stdin,
            stdio.stdout,
            stdio.stderr,
            stdio.terminal,
            direct=direct,
        )
        self._publisher.publish(
            namespace,
            "/tasks/exec-added",
            events.TaskExecAdded(container_id=container_id, exec_id=exec_id),
        )

    async def resize_pty(
        self, namespace: str, container_id: str, width: int, height: int, exec_id: str = ""
    ) -> None:
        await self.runtime.resize_pty(namespace, container_id, width, height, exec_id)

    async def close_stdin(self, namespace: str, container_id: str, exec_id: str = "") -> None:
        await self.runtime.close_stdin(namespace, container_id, exec_id)

    async def pause(self, namespace: str, container_id: str) -> None:
        await self.runtime.pause(namespace, container_id)
        self._publisher.publish(
            namespace, "/tasks/paused", events.TaskPaused(container_id=container_id)
        )

    async def resume(self, namespace: str, container_id: str) -> None:
        await self.runtime.resume(namespace, container_id)
        self._publisher.publish(
            namespace, "/tasks/resumed", events.TaskResumed(container_id=container_id)
        )

    async def pids(self, namespace: str, container_id: str) -> list[PidInfo]:
        return await self.runtime.pids(namespace, container_id)

    async def update(self, namespace: str, container_id: str, resources: bytes) -> None:
        """Apply new resources (an OCI LinuxResources JSON object)."""
        await self.runtime.update(namespace, container_id, _json(resources, "resources"))

    async def metrics(
        self, namespace: str, wanted: Callable[[str], bool] | None = None
    ) -> list[tuple[str, TaskMetrics]]:
        """The numbers of each live task (by container id) that `wanted` accepts; a task
        gone meanwhile is left out."""
        found = []
        for state in self.runtime.list_tasks(namespace):
            if state.status not in _ACTIVE:
                continue
            if wanted is not None and not wanted(state.container_id):
                continue
            try:
                data = await self.runtime.metrics(namespace, state.container_id)
            except NotFound:
                continue
            found.append((state.container_id, data))
        return found

    async def reopen_log(self, namespace: str, container_id: str) -> None:
        """Reopen the task's log file at its path (after a rotation renamed it)."""
        await self.runtime.reopen_log(namespace, container_id)

    async def wait(self, namespace: str, container_id: str, exec_id: str = "") -> ExitInfo:
        return await self.runtime.wait(namespace, container_id, exec_id)
