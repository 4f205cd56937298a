from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import grpc
from google.protobuf.any_pb2 import Any as AnyPb
from google.protobuf.empty_pb2 import Empty
from google.protobuf.message import DecodeError, Message

from liner_api.containerd.cgroups.v1 import metrics_pb2 as cgroups_pb2
from liner_api.containerd.events import task_pb2 as events_pb2
from liner_api.containerd.runc.v1 import options_pb2
from liner_api.containerd.services.tasks.v1 import tasks_pb2, tasks_pb2_grpc
from liner_api.containerd.types import metrics_pb2, mount_pb2
from liner_api.containerd.types.task import task_pb2
from linerd import context
from linerd.core import filters
from linerd.core.types import Container, Mount
from linerd.errdefs import InvalidArgument, NotFound, NotImplementedYet
from linerd.events import Exchange
from linerd.metadata.containers import ContainerStore
from linerd.runtime import ProcessState, TaskMetrics, TaskRuntime, TaskStatus
from linerd.runtime.resolve import Runtimes
from linerd.services.convert import pack, timestamp
from linerd.snapshots.store import SnapshotStore

RUNC_OPTIONS = "containerd.runc.v1.Options"
# Task metrics are filled by `metrics_encoder` (cgroup v1 Metrics), set when available.
MetricsEncoder = Callable[[Any], AnyPb]


def _json(value: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(value)
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidArgument(f"{what} is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise InvalidArgument(f"{what} is not a JSON object")
    return doc


def _process(state: ProcessState) -> task_pb2.Process:
    # As containerd answers: the init process has id = container id and no container_id.
    return task_pb2.Process(
        container_id=state.container_id if state.exec_id else "",
        id=state.exec_id or state.container_id,
        pid=state.pid,
        status=state.status.value,
        stdin=state.stdin,
        stdout=state.stdout,
        stderr=state.stderr,
        terminal=state.terminal,
        exit_status=state.exit_status,
        exited_at=timestamp(state.exited_at),
    )


class TasksService(tasks_pb2_grpc.TasksServicer):
    def __init__(
        self,
        runtime: TaskRuntime,
        runtimes: Runtimes,
        containers: ContainerStore,
        snapshots: dict[str, SnapshotStore],
        events: Exchange,
        metrics_encoder: MetricsEncoder | None = None,
    ) -> None:
        self._runtime = runtime
        self._runtimes = runtimes
        self._containers = containers
        self._snapshots = snapshots
        self._events = events
        self._metrics_encoder = metrics_encoder
        # Exits seen while a Start of that process is in flight: published after its start
        # event, so /tasks/start (/tasks/exec-started) always precedes /tasks/exit, as
        # containerd's shim guarantees (a fast process can exit before `runtime start` returns).
        self._starting: dict[tuple[str, str, str], list[events_pb2.TaskExit]] = {}
        runtime.on_exit(self._exited)
        runtime.on_oom(self._oom)

    def _publish(self, namespace: str, topic: str, event: Message) -> None:
        any_ = pack(event)
        self._events.publish(namespace, topic, any_.type_url, any_.value)

    def _exited(
        self,
        namespace: str,
        container_id: str,
        exec_id: str,
        pid: int,
        status: int,
        exited_at: datetime,
    ) -> None:
        event = events_pb2.TaskExit(
            container_id=container_id,
            id=exec_id or container_id,
            pid=pid,
            exit_status=status,
            exited_at=timestamp(exited_at),
        )
        held = self._starting.get((namespace, container_id, exec_id))
        if held is not None:
            held.append(event)
        else:
            self._publish(namespace, "/tasks/exit", event)

    def _oom(self, namespace: str, container_id: str) -> None:
        self._publish(namespace, "/tasks/oom", events_pb2.TaskOOM(container_id=container_id))

    async def _rootfs(
        self, namespace: str, container: Container, requested: list[mount_pb2.Mount]
    ) -> list[Mount]:
        if requested:
            return [Mount(m.type, m.source, tuple(m.options)) for m in requested]
        if container.snapshot_key:
            store = self._snapshots.get(container.snapshotter)
            if store is None:
                raise InvalidArgument(f"snapshotter {container.snapshotter!r} is not loaded")
            return await store.mounts(namespace, container.snapshot_key)
        return []

    def _runtime_for(self, container: Container, runtime_path: str) -> Any:
        binary = ""
        options = container.runtime_options
        if options is not None and options.type_url == RUNC_OPTIONS and options.value:
            try:
                binary = options_pb2.Options.FromString(options.value).binary_name
            except DecodeError as e:
                raise InvalidArgument(f"invalid runc options: {e}") from None
        return self._runtimes.resolve(container.runtime, binary, runtime_path)

    async def Create(
        self, request: tasks_pb2.CreateTaskRequest, ctx: grpc.aio.ServicerContext
    ) -> tasks_pb2.CreateTaskResponse:
        namespace = context.namespace()
        if request.HasField("checkpoint") and request.checkpoint.digest:
            raise NotImplementedYet("restoring from a checkpoint is not supported")
        container = await self._containers.get(namespace, request.container_id)
        assert container.spec is not None
        spec = _json(container.spec.value, f"spec of container {container.id!r}")
        rootfs = await self._rootfs(namespace, container, list(request.rootfs))
        runtime = self._runtime_for(container, request.runtime_path)
        pid = await self._runtime.create(
            namespace,
            container.id,
            spec,
            rootfs,
            request.stdin,
            request.stdout,
            request.stderr,
            request.terminal,
            runtime,
        )
        self._publish(
            namespace,
            "/tasks/create",
            events_pb2.TaskCreate(
                container_id=container.id,
                bundle=str(self._runtime.bundle_dir(namespace, container.id)),
                rootfs=[
                    mount_pb2.Mount(type=m.type, source=m.source, options=m.options) for m in rootfs
                ],
                io=events_pb2.TaskIO(
                    stdin=request.stdin,
                    stdout=request.stdout,
                    stderr=request.stderr,
                    terminal=request.terminal,
                ),
                pid=pid,
            ),
        )
        return tasks_pb2.CreateTaskResponse(container_id=container.id, pid=pid)

    async def Start(
        self, request: tasks_pb2.StartRequest, ctx: grpc.aio.ServicerContext
    ) -> tasks_pb2.StartResponse:
        namespace, cid, exec_id = context.namespace(), request.container_id, request.exec_id
        key = (namespace, cid, exec_id)
        owner = key not in self._starting
        if owner:
            self._starting[key] = []
        try:
            if exec_id:
                pid = await self._runtime.start_exec(namespace, cid, exec_id)
                self._publish(
                    namespace,
                    "/tasks/exec-started",
                    events_pb2.TaskExecStarted(container_id=cid, exec_id=exec_id, pid=pid),
                )
            else:
                pid = await self._runtime.start(namespace, cid)
                self._publish(
                    namespace, "/tasks/start", events_pb2.TaskStart(container_id=cid, pid=pid)
                )
        finally:
            if owner:
                for event in self._starting.pop(key):
                    self._publish(namespace, "/tasks/exit", event)
        return tasks_pb2.StartResponse(pid=pid)

    async def Delete(
        self, request: tasks_pb2.DeleteTaskRequest, ctx: grpc.aio.ServicerContext
    ) -> tasks_pb2.DeleteResponse:
        namespace, cid = context.namespace(), request.container_id
        info = await self._runtime.delete(namespace, cid)
        self._publish(
            namespace,
            "/tasks/delete",
            events_pb2.TaskDelete(
                container_id=cid,
                id=cid,
                pid=info.pid,
                exit_status=info.exit_status,
                exited_at=timestamp(info.exited_at),
            ),
        )
        return tasks_pb2.DeleteResponse(
            id=cid, pid=info.pid, exit_status=info.exit_status, exited_at=timestamp(info.exited_at)
        )

    async def DeleteProcess(
        self, request: tasks_pb2.DeleteProcessRequest, ctx: grpc.aio.ServicerContext
    ) -> tasks_pb2.DeleteResponse:
        if not request.exec_id:
            raise InvalidArgument("exec id is required: use Delete for the task itself")
        info = await self._runtime.delete_exec(
            context.namespace(), request.container_id, request.exec_id
        )
        return tasks_pb2.DeleteResponse(
            id=request.exec_id,
            pid=info.pid,
            exit_status=info.exit_status,
            exited_at=timestamp(info.exited_at),
        )

    async def Get(
        self, request: tasks_pb2.GetRequest, ctx: grpc.aio.ServicerContext
    ) -> tasks_pb2.GetResponse:
        state = self._runtime.state(context.namespace(), request.container_id, request.exec_id)
        return tasks_pb2.GetResponse(process=_process(state))

    async def List(
        self, request: tasks_pb2.ListTasksRequest, ctx: grpc.aio.ServicerContext
    ) -> tasks_pb2.ListTasksResponse:
        match = filters.parse(request.filter)
        tasks = [
            _process(s)
            for s in self._runtime.list_tasks(context.namespace())
            if match.match(
                filters.dict_adaptor(
                    {"id": s.container_id, "status": s.status.name.lower(), "pid": str(s.pid)}
                )
            )
        ]
        return tasks_pb2.ListTasksResponse(tasks=tasks)

    async def Kill(self, request: tasks_pb2.KillRequest, ctx: grpc.aio.ServicerContext) -> Empty:
        namespace = context.namespace()
        if request.exec_id:
            await self._runtime.kill_exec(
                namespace, request.container_id, request.exec_id, request.signal
            )
        else:
            await self._runtime.kill(namespace, request.container_id, request.signal, request.all)
        return Empty()

    async def Exec(
        self, request: tasks_pb2.ExecProcessRequest, ctx: grpc.aio.ServicerContext
    ) -> Empty:
        namespace = context.namespace()
        if not request.exec_id:
            raise InvalidArgument("exec id must not be empty")
        process = _json(request.spec.value, "exec process spec")
        await self._runtime.exec(
            namespace,
            request.container_id,
            request.exec_id,
            process,
            request.stdin,
            request.stdout,
            request.stderr,
            request.terminal,
        )
        self._publish(
            namespace,
            "/tasks/exec-added",
            events_pb2.TaskExecAdded(container_id=request.container_id, exec_id=request.exec_id),
        )
        return Empty()

    async def ResizePty(
        self, request: tasks_pb2.ResizePtyRequest, ctx: grpc.aio.ServicerContext
    ) -> Empty:
        await self._runtime.resize_pty(
            context.namespace(),
            request.container_id,
            request.width,
            request.height,
            request.exec_id,
        )
        return Empty()

    async def CloseIO(
        self, request: tasks_pb2.CloseIORequest, ctx: grpc.aio.ServicerContext
    ) -> Empty:
        if request.stdin:
            await self._runtime.close_stdin(
                context.namespace(), request.container_id, request.exec_id
            )
        return Empty()

    async def _pause_or_resume(
        self, action: Callable[[str, str], Awaitable[None]], cid: str, topic: str, event: Message
    ) -> Empty:
        namespace = context.namespace()
        await action(namespace, cid)
        self._publish(namespace, topic, event)
        return Empty()

    async def Pause(
        self, request: tasks_pb2.PauseTaskRequest, ctx: grpc.aio.ServicerContext
    ) -> Empty:
        return await self._pause_or_resume(
            self._runtime.pause,
            request.container_id,
            "/tasks/paused",
            events_pb2.TaskPaused(container_id=request.container_id),
        )

    async def Resume(
        self, request: tasks_pb2.ResumeTaskRequest, ctx: grpc.aio.ServicerContext
    ) -> Empty:
        return await self._pause_or_resume(
            self._runtime.resume,
            request.container_id,
            "/tasks/resumed",
            events_pb2.TaskResumed(container_id=request.container_id),
        )

    async def ListPids(
        self, request: tasks_pb2.ListPidsRequest, ctx: grpc.aio.ServicerContext
    ) -> tasks_pb2.ListPidsResponse:
        pids = await self._runtime.pids(context.namespace(), request.container_id)
        return tasks_pb2.ListPidsResponse(
            processes=[
                task_pb2.ProcessInfo(
                    pid=p.pid,
                    info=pack(options_pb2.ProcessDetails(exec_id=p.exec_id)) if p.exec_id else None,
                )
                for p in pids
            ]
        )

    async def Checkpoint(
        self, request: tasks_pb2.CheckpointTaskRequest, ctx: grpc.aio.ServicerContext
    ) -> tasks_pb2.CheckpointTaskResponse:
        raise NotImplementedYet("checkpoint is not supported")

    async def Update(
        self, request: tasks_pb2.UpdateTaskRequest, ctx: grpc.aio.ServicerContext
    ) -> Empty:
        resources = _json(request.resources.value, "resources")
        await self._runtime.update(context.namespace(), request.container_id, resources)
        return Empty()

    async def Metrics(
        self, request: tasks_pb2.MetricsRequest, ctx: grpc.aio.ServicerContext
    ) -> tasks_pb2.MetricsResponse:
        if self._metrics_encoder is None:
            raise NotImplementedYet("task metrics are not available")
        namespace = context.namespace()
        match = filters.parse_all(list(request.filters))
        metrics = []
        for state in self._runtime.list_tasks(namespace):
            if state.status not in (TaskStatus.RUNNING, TaskStatus.PAUSED, TaskStatus.CREATED):
                continue
            if not match.match(filters.dict_adaptor({"id": state.container_id})):
                continue
            try:
                data = await self._runtime.metrics(namespace, state.container_id)
            except NotFound:
                continue
            metrics.append(self._metric(state.container_id, data))
        return tasks_pb2.MetricsResponse(metrics=metrics)

    def _metric(self, container_id: str, data: Any) -> metrics_pb2.Metric:
        assert self._metrics_encoder is not None
        return metrics_pb2.Metric(
            timestamp=timestamp(datetime.now(UTC)),
            id=container_id,
            data=self._metrics_encoder(data),
        )

    async def Wait(
        self, request: tasks_pb2.WaitRequest, ctx: grpc.aio.ServicerContext
    ) -> tasks_pb2.WaitResponse:
        info = await self._runtime.wait(context.namespace(), request.container_id, request.exec_id)
        return tasks_pb2.WaitResponse(
            exit_status=info.exit_status, exited_at=timestamp(info.exited_at)
        )


def encode_cgroup_metrics(m: TaskMetrics) -> AnyPb:
    """A task's numbers as cgroup v1 `io.containerd.cgroups.v1.Metrics`, what ctr decodes."""
    memory_fields = _memory_stat_fields(m.memory_stat)
    data = cgroups_pb2.Metrics(
        pids=cgroups_pb2.PidsStat(current=m.pids_current, limit=m.pids_limit),
        cpu=cgroups_pb2.CPUStat(
            usage=cgroups_pb2.CPUUsage(
                total=m.cpu_usage_ns,
                kernel=m.cpu_kernel_ns,
                user=m.cpu_user_ns,
                per_cpu=m.per_cpu_ns,
            )
        ),
        memory=cgroups_pb2.MemoryStat(
            usage=cgroups_pb2.MemoryEntry(
                limit=m.memory_limit,
                usage=m.memory_usage,
                max=m.memory_max_usage,
                failcnt=m.memory_failcnt,
            ),
            **memory_fields,
        ),
    )
    return pack(data)


# memory.stat keys whose MemoryStat field is spelled differently (as containerd's cgroups lib).
_MEMORY_STAT_NAMES = {
    "pgpgin": "pg_pg_in",
    "pgpgout": "pg_pg_out",
    "pgfault": "pg_fault",
    "pgmajfault": "pg_maj_fault",
}


def _memory_stat_fields(stat: dict[str, int]) -> dict[str, int]:
    """memory.stat counters as MemoryStat's scalar fields. Keys naming a MemoryEntry field
    (`swap` when swap accounting is on) are not counters of that field: they are skipped."""
    fields = cgroups_pb2.MemoryStat.DESCRIPTOR.fields_by_name
    res = {}
    for key, value in stat.items():
        base = key.removeprefix("total_")
        name = key[: len(key) - len(base)] + _MEMORY_STAT_NAMES.get(base, base)
        field = fields.get(name)
        if field is not None and field.message_type is None:
            res[name] = value
    return res
