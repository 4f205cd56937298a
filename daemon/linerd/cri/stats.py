"""The CRI's stats (the `stats` handler group): ContainerStats, ListContainerStats,
PodSandboxStats, ListPodSandboxStats, from the tasks' cgroups (the runtime's metrics) and the
writable layer's usage (the snapshotter's).

CPU `usage_nano_cores` is a rate: the change of the cumulative usage since the previous
sample of the same container (none on the first), as containerd computes it.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from liner_api.runtime.v1 import api_pb2 as cri
from linerd.cri import meta
from linerd.errdefs import LinerError, NotFound
from linerd.runtime import TaskMetrics, TaskStatus

if TYPE_CHECKING:
    from linerd.core.types import Container
    from linerd.cri.containers import Containers
    from linerd.cri.sandboxes import Sandboxes


def _u(value: int) -> cri.UInt64Value:
    return cri.UInt64Value(value=max(int(value), 0))


class Stats:
    def __init__(self, sandboxes: Sandboxes, containers: Containers) -> None:
        self.sandboxes = sandboxes
        self.containers = containers
        self.core = containers.core
        # container id -> (timestamp ns, cumulative cpu ns) of the previous sample
        self._last_cpu: dict[str, tuple[int, int]] = {}

    async def _metrics(self, container_id: str) -> TaskMetrics | None:
        try:
            st = self.core.local.tasks.state(meta.NAMESPACE, container_id)
        except NotFound:
            return None
        if st.status != TaskStatus.RUNNING:
            return None
        try:
            return await self.core.runtime.metrics(meta.NAMESPACE, container_id)
        except LinerError:
            return None

    def _cpu(self, key: str, now: int, m: TaskMetrics) -> cri.CpuUsage:
        cpu = cri.CpuUsage(timestamp=now, usage_core_nano_seconds=_u(m.cpu_usage_ns))
        last = self._last_cpu.get(key)
        if last is not None and now > last[0] and m.cpu_usage_ns >= last[1]:
            rate = (m.cpu_usage_ns - last[1]) * 1_000_000_000 // (now - last[0])
            cpu.usage_nano_cores.CopyFrom(_u(rate))
        self._last_cpu[key] = (now, m.cpu_usage_ns)
        return cpu

    @staticmethod
    def _memory(now: int, m: TaskMetrics) -> cri.MemoryUsage:
        stat = m.memory_stat
        inactive = stat.get("total_inactive_file", stat.get("inactive_file", 0))
        working = max(m.memory_usage - inactive, 0)
        mem = cri.MemoryUsage(
            timestamp=now,
            working_set_bytes=_u(working),
            usage_bytes=_u(m.memory_usage),
            rss_bytes=_u(stat.get("total_rss", stat.get("rss", 0))),
            page_faults=_u(stat.get("total_pgfault", stat.get("pgfault", 0))),
            major_page_faults=_u(stat.get("total_pgmajfault", stat.get("pgmajfault", 0))),
        )
        # An unlimited cgroup v1 reports a huge limit: no available bytes then.
        if 0 < m.memory_limit < 1 << 62:
            mem.available_bytes.CopyFrom(_u(m.memory_limit - working))
        return mem

    async def _container_stats(
        self, record: Container, pids: list[int] | None = None
    ) -> cri.ContainerStats | None:
        """`pids`, if given, gets the container's process count (for its pod's stats)."""
        m = meta.container_meta(record)
        config = cri.ContainerConfig.FromString(m.config)
        stats = cri.ContainerStats(
            attributes=cri.ContainerAttributes(
                id=record.id,
                metadata=config.metadata,
                labels=config.labels,
                annotations=config.annotations,
            )
        )
        now = time.time_ns()
        metrics = await self._metrics(record.id)
        if metrics is not None:
            if pids is not None:
                pids.append(metrics.pids_current)
            stats.cpu.CopyFrom(self._cpu(record.id, now, metrics))
            stats.memory.CopyFrom(self._memory(now, metrics))
        try:
            usage = await self.core.local.snapshots.usage(
                meta.NAMESPACE, record.snapshotter, record.snapshot_key
            )
        except LinerError:
            usage = None
        if usage is not None:
            snapshotter = self.core.local.snapshots.store(record.snapshotter)
            stats.writable_layer.CopyFrom(
                cri.FilesystemUsage(
                    timestamp=now,
                    fs_id=cri.FilesystemIdentifier(
                        mountpoint=str(getattr(snapshotter, "root", self.core.root))
                    ),
                    used_bytes=_u(usage.size),
                    inodes_used=_u(usage.inodes),
                )
            )
        return stats

    async def container_stats(self, req: cri.ContainerStatsRequest) -> cri.ContainerStatsResponse:
        record = await self.containers.records.find(meta.KIND_CONTAINER, req.container_id)
        stats = await self._container_stats(record)
        return cri.ContainerStatsResponse(stats=stats)

    async def list_container_stats(
        self, req: cri.ListContainerStatsRequest
    ) -> cri.ListContainerStatsResponse:
        f = req.filter
        out = []
        for record in await self.containers.records.list(meta.KIND_CONTAINER):
            if f.id and not record.id.startswith(f.id):
                continue
            if f.pod_sandbox_id and not record.sandbox.startswith(f.pod_sandbox_id):
                continue
            if self.containers.state_of(record, meta.container_meta(record)) != (
                cri.CONTAINER_RUNNING
            ):
                continue
            config = cri.ContainerConfig.FromString(meta.container_meta(record).config)
            if f.label_selector and not meta.matches_labels(
                dict(config.labels), dict(f.label_selector)
            ):
                continue
            stats = await self._container_stats(record)
            if stats is not None:
                out.append(stats)
        return cri.ListContainerStatsResponse(stats=out)

    async def _sandbox_stats(self, record: Container) -> cri.PodSandboxStats:
        m = meta.sandbox_meta(record)
        config = cri.PodSandboxConfig.FromString(m.config)
        stats = cri.PodSandboxStats(
            attributes=cri.PodSandboxAttributes(
                id=record.id,
                metadata=config.metadata,
                labels=config.labels,
                annotations=config.annotations,
            )
        )
        now = time.time_ns()
        cpu_ns = mem_usage = working = 0
        counts: list[int] = []  # processes: the containers' (and the pause's, if one runs)
        for c in await self.containers.containers_of(record.id):
            cs = await self._container_stats(c, counts)
            if cs is None:
                continue
            if cs.HasField("cpu"):
                stats.linux.containers.append(cs)
                cpu_ns += cs.cpu.usage_core_nano_seconds.value
                mem_usage += cs.memory.usage_bytes.value
                working += cs.memory.working_set_bytes.value
        pause = await self._metrics(record.id)
        if pause is not None:
            cpu_ns += pause.cpu_usage_ns
            mem_usage += pause.memory_usage
            counts.append(pause.pids_current)
        pids = sum(counts)
        agg = TaskMetrics(cpu_usage_ns=cpu_ns, memory_usage=mem_usage)
        stats.linux.cpu.CopyFrom(self._cpu("pod:" + record.id, now, agg))
        stats.linux.memory.CopyFrom(
            cri.MemoryUsage(timestamp=now, usage_bytes=_u(mem_usage), working_set_bytes=_u(working))
        )
        stats.linux.process.CopyFrom(cri.ProcessUsage(timestamp=now, process_count=_u(pids)))
        return stats

    async def pod_sandbox_stats(
        self, req: cri.PodSandboxStatsRequest
    ) -> cri.PodSandboxStatsResponse:
        record = await self.sandboxes.records.find(meta.KIND_SANDBOX, req.pod_sandbox_id)
        return cri.PodSandboxStatsResponse(stats=await self._sandbox_stats(record))

    async def list_pod_sandbox_stats(
        self, req: cri.ListPodSandboxStatsRequest
    ) -> cri.ListPodSandboxStatsResponse:
        f = req.filter
        out = []
        for record in await self.sandboxes.records.list(meta.KIND_SANDBOX):
            if f.id and not record.id.startswith(f.id):
                continue
            m = meta.sandbox_meta(record)
            if not self.sandboxes.ready(record, m):
                continue
            config = cri.PodSandboxConfig.FromString(m.config)
            if f.label_selector and not meta.matches_labels(
                dict(config.labels), dict(f.label_selector)
            ):
                continue
            out.append(await self._sandbox_stats(record))
        return cri.ListPodSandboxStatsResponse(stats=out)
