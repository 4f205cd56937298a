from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import grpc
from google.protobuf.any_pb2 import Any as AnyPb
from google.protobuf.empty_pb2 import Empty

from liner_api.containerd.cgroups.v1 import metrics_pb2 as cgroups_pb2
from liner_api.containerd.runc.v1 import options_pb2
from liner_api.containerd.services.tasks.v1 import tasks_pb2, tasks_pb2_grpc
from liner_api.containerd.types import metrics_pb2
from liner_api.containerd.types.task import task_pb2
from linerd import context
from linerd.core import filters
from linerd.core.types import Mount
from linerd.errdefs import NotImplementedYet
from linerd.local.tasks import Stdio, Tasks
from linerd.runtime import ExitInfo, ProcessState, TaskMetrics
from linerd.services.convert import answering_bytes, framed, pack, timestamp

# Tasks/List may answer with its serialization (TasksService._answer).
add_tasks_to_server = answering_bytes(tasks_pb2_grpc.add_TasksServicer_to_server, "List")

# Task metrics are filled by `metrics_encoder` (cgroup v1 Metrics), set when available.
MetricsEncoder = Callable[[Any], AnyPb]


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


def _delete_response(id: str, info: ExitInfo) -> tasks_pb2.DeleteResponse:
    return tasks_pb2.DeleteResponse(
        id=id, pid=info.pid, exit_status=info.exit_status, exited_at=timestamp(info.exited_at)
    )


class TasksService(tasks_pb2_grpc.TasksServicer):
    def __init__(self, local: Tasks, metrics_encoder: MetricsEncoder | None = None) -> None:
        self._local = local
        self._metrics_encoder = metrics_encoder
        # Per namespace, container id -> (state, its Process serialized as a List answer's
        # element) of the last List: a state object stays the same while the task's state
        # does (TaskRuntime), so a List of 200 serializes only what changed since.
        self._framed: dict[str, dict[str, tuple[ProcessState, bytes]]] = {}

    async def Create(
        self, request: tasks_pb2.CreateTaskRequest, ctx: grpc.aio.ServicerContext
    ) -> tasks_pb2.CreateTaskResponse:
        pid = await self._local.create(
            context.namespace(),
            request.container_id,
            Stdio(request.stdin, request.stdout, request.stderr, request.terminal),
            [Mount(m.type, m.source, tuple(m.options)) for m in request.rootfs],
            request.runtime_path,
            request.checkpoint.digest if request.HasField("checkpoint") else "",
        )
        return tasks_pb2.CreateTaskResponse(container_id=request.container_id, pid=pid)

    async def Start(
        self, request: tasks_pb2.StartRequest, ctx: grpc.aio.ServicerContext
    ) -> tasks_pb2.StartResponse:
        pid = await self._local.start(context.namespace(), request.container_id, request.exec_id)
        return tasks_pb2.StartResponse(pid=pid)

    async def Delete(
        self, request: tasks_pb2.DeleteTaskRequest, ctx: grpc.aio.ServicerContext
    ) -> tasks_pb2.DeleteResponse:
        info = await self._local.delete(context.namespace(), request.container_id)
        return _delete_response(request.container_id, info)

    async def DeleteProcess(
        self, request: tasks_pb2.DeleteProcessRequest, ctx: grpc.aio.ServicerContext
    ) -> tasks_pb2.DeleteResponse:
        info = await self._local.delete_process(
            context.namespace(), request.container_id, request.exec_id
        )
        return _delete_response(request.exec_id, info)

    async def Get(
        self, request: tasks_pb2.GetRequest, ctx: grpc.aio.ServicerContext
    ) -> tasks_pb2.GetResponse:
        state = self._local.state(context.namespace(), request.container_id, request.exec_id)
        return tasks_pb2.GetResponse(process=_process(state))

    async def List(
        self, request: tasks_pb2.ListTasksRequest, ctx: grpc.aio.ServicerContext
    ) -> tasks_pb2.ListTasksResponse | bytes:
        namespace = context.namespace()
        states = self._local.list(namespace)
        if not request.filter:
            return self._answer(namespace, states)
        match = filters.parse(request.filter)
        states = [
            s
            for s in states
            if match.match(
                filters.dict_adaptor(
                    {"id": s.container_id, "status": s.status.name.lower(), "pid": str(s.pid)}
                )
            )
        ]
        return tasks_pb2.ListTasksResponse(tasks=[_process(s) for s in states])

    def _answer(self, namespace: str, states: list[ProcessState]) -> bytes:
        """The serialized ListTasksResponse of `states` (no await: Lists never interleave)."""
        before = self._framed.get(namespace, {})
        now: dict[str, tuple[ProcessState, bytes]] = {}
        for s in states:
            hit = before.get(s.container_id)
            if hit is None or hit[0] is not s:
                hit = (s, framed(_process(s).SerializeToString()))
            now[s.container_id] = hit
        self._framed[namespace] = now
        return b"".join(hit[1] for hit in now.values())

    async def Kill(self, request: tasks_pb2.KillRequest, ctx: grpc.aio.ServicerContext) -> Empty:
        await self._local.kill(
            context.namespace(), request.container_id, request.signal, request.exec_id, request.all
        )
        return Empty()

    async def Exec(
        self, request: tasks_pb2.ExecProcessRequest, ctx: grpc.aio.ServicerContext
    ) -> Empty:
        await self._local.exec(
            context.namespace(),
            request.container_id,
            request.exec_id,
            request.spec.value,
            Stdio(request.stdin, request.stdout, request.stderr, request.terminal),
        )
        return Empty()

    async def ResizePty(
        self, request: tasks_pb2.ResizePtyRequest, ctx: grpc.aio.ServicerContext
    ) -> Empty:
        await self._local.resize_pty(
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
            await self._local.close_stdin(
                context.namespace(), request.container_id, request.exec_id
            )
        return Empty()

    async def Pause(
        self, request: tasks_pb2.PauseTaskRequest, ctx: grpc.aio.ServicerContext
    ) -> Empty:
        await self._local.pause(context.namespace(), request.container_id)
        return Empty()

    async def Resume(
        self, request: tasks_pb2.ResumeTaskRequest, ctx: grpc.aio.ServicerContext
    ) -> Empty:
        await self._local.resume(context.namespace(), request.container_id)
        return Empty()

    async def ListPids(
        self, request: tasks_pb2.ListPidsRequest, ctx: grpc.aio.ServicerContext
    ) -> tasks_pb2.ListPidsResponse:
        pids = await self._local.pids(context.namespace(), request.container_id)
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
        await self._local.update(context.namespace(), request.container_id, request.resources.value)
        return Empty()

    async def Metrics(
        self, request: tasks_pb2.MetricsRequest, ctx: grpc.aio.ServicerContext
    ) -> tasks_pb2.MetricsResponse:
        if self._metrics_encoder is None:
            raise NotImplementedYet("task metrics are not available")
        match = filters.parse_all(list(request.filters))
        found = await self._local.metrics(
            context.namespace(), lambda cid: match.match(filters.dict_adaptor({"id": cid}))
        )
        return tasks_pb2.MetricsResponse(metrics=[self._metric(cid, data) for cid, data in found])

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
        info = await self._local.wait(context.namespace(), request.container_id, request.exec_id)
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
