"""Prometheus metrics, served at /v1/metrics on the configured address (as containerd's).

Label values are bounded: gRPC service, method and code, pull outcomes, states. Never image
names, references or container ids.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Coroutine, Iterable
from pathlib import Path
from typing import Any, TypeVar

import structlog
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from linerd.runtime import ProcessState, TaskRuntime, TaskStatus

log = structlog.get_logger("linerd.metrics")
T = TypeVar("T")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_BYTES_BUCKETS = [1 << n for n in range(10, 36, 2)]  # 1 KiB .. 32 GiB
_SECONDS_BUCKETS = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300]


class _StoreCollector(Collector):
    """Sizes read when scraped: content store bytes and blobs, and per-snapshotter usage."""

    def __init__(self, blobs: Path, snapshot_sizes: Callable[[], dict[str, tuple[int, int]]]):
        self._blobs = blobs
        self._snapshot_sizes = snapshot_sizes

    def collect(self) -> Iterable[Metric]:
        size = count = 0
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self._blobs):
                with contextlib.suppress(FileNotFoundError):
                    size += entry.stat().st_size
                    count += 1
        yield GaugeMetricFamily("liner_content_bytes", "Bytes of committed blobs", value=size)
        yield GaugeMetricFamily("liner_content_blobs", "Committed blobs", value=count)
        snap_bytes = GaugeMetricFamily(
            "liner_snapshot_bytes", "Disk usage of committed snapshots", labels=["snapshotter"]
        )
        snap_count = GaugeMetricFamily(
            "liner_snapshots", "Snapshots of any kind", labels=["snapshotter"]
        )
        for name, (used, number) in self._snapshot_sizes().items():
            snap_bytes.add_metric([name], used)
            snap_count.add_metric([name], number)
        yield snap_bytes
        yield snap_count


class _TaskCollector(Collector):
    """Containers, tasks by state, and each live task's CPU, memory and pids from its cgroup.

    Per-task series exist only while the task does (labels: namespace and container id).
    Runs in the scrape's worker thread; the runtime is asked on the event loop.
    """

    def __init__(
        self, runtime: TaskRuntime, loop: asyncio.AbstractEventLoop, containers: Callable[[], int]
    ) -> None:
        self._runtime = runtime
        self._loop = loop
        self._containers = containers

    def _on_loop(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    def collect(self) -> Iterable[Metric]:
        yield GaugeMetricFamily("liner_containers", "Container records", value=self._containers())

        async def snapshot() -> list[ProcessState]:
            return self._runtime.list_tasks()

        tasks = self._on_loop(snapshot())
        by_state = GaugeMetricFamily("liner_tasks", "Tasks by state", labels=["state"])
        for state in TaskStatus:
            count = sum(t.status is state for t in tasks)
            by_state.add_metric([state.name.lower()], count)
        yield by_state
        labels = ["namespace", "container_id"]
        cpu = CounterMetricFamily("liner_task_cpu_seconds", "CPU time of a task", labels=labels)
        memory = GaugeMetricFamily(
            "liner_task_memory_bytes", "Memory in use by a task", labels=labels
        )
        pids = GaugeMetricFamily("liner_task_pids", "Processes in a task", labels=labels)
        for task in tasks:
            if task.status not in (TaskStatus.RUNNING, TaskStatus.PAUSED):
                continue
            try:
                m = self._on_loop(self._runtime.metrics(task.namespace, task.container_id))
            except Exception:
                continue
            key = [task.namespace, task.container_id]
            cpu.add_metric(key, m.cpu_usage_ns / 1e9)
            memory.add_metric(key, m.memory_usage)
            pids.add_metric(key, m.pids_current)
        yield cpu
        yield memory
        yield pids


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.grpc_requests = Counter(
            "liner_grpc_requests",
            "gRPC calls handled",
            ["service", "method", "code"],
            registry=self.registry,
        )
        self.grpc_seconds = Histogram(
            "liner_grpc_request_duration_seconds",
            "gRPC call latency",
            ["service", "method"],
            buckets=_SECONDS_BUCKETS,
            registry=self.registry,
        )
        self.pulls = Counter(
            "liner_pulls", "Image pulls by outcome", ["outcome"], registry=self.registry
        )
        self.pull_bytes = Histogram(
            "liner_pull_bytes",
            "Bytes fetched per pull",
            buckets=_BYTES_BUCKETS,
            registry=self.registry,
        )
        self.pull_seconds = Histogram(
            "liner_pull_duration_seconds",
            "Pull duration",
            buckets=_SECONDS_BUCKETS,
            registry=self.registry,
        )
        self.unpack_seconds = Histogram(
            "liner_unpack_duration_seconds",
            "Time to unpack one layer",
            buckets=_SECONDS_BUCKETS,
            registry=self.registry,
        )

    def add_stores(
        self, blobs: Path, snapshot_sizes: Callable[[], dict[str, tuple[int, int]]]
    ) -> None:
        self.registry.register(_StoreCollector(blobs, snapshot_sizes))

    def add_tasks(
        self, runtime: TaskRuntime, loop: asyncio.AbstractEventLoop, containers: Callable[[], int]
    ) -> None:
        self.registry.register(_TaskCollector(runtime, loop, containers))

    def observe_call(self, full_method: str, code: str, seconds: float) -> None:
        service, _, method = full_method.lstrip("/").partition("/")
        self.grpc_requests.labels(service, method, code).inc()
        self.grpc_seconds.labels(service, method).observe(seconds)

    def observe_pull(self, ok: bool, fetched: int, seconds: float) -> None:
        self.pulls.labels("success" if ok else "failure").inc()
        if ok:
            self.pull_bytes.observe(fetched)
            self.pull_seconds.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsServer:
    """A minimal HTTP/1.0 endpoint: GET /v1/metrics, nothing else."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._server: asyncio.Server | None = None

    async def start(self, address: str) -> None:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"metrics address {address!r}: want host:port")
        self._server = await asyncio.start_server(self._handle, host.strip("[]"), int(port))
        log.info("serving metrics", address=address, path="/v1/metrics")

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            method, path, *_ = request.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
            if method in ("GET", "HEAD") and path.split("?", 1)[0] == "/v1/metrics":
                body = await asyncio.to_thread(self._metrics.render)
                head = f"HTTP/1.0 200 OK\r\nContent-Type: {CONTENT_TYPE}\r\n"
            else:
                body, head = (
                    b"not found\n",
                    "HTTP/1.0 404 Not Found\r\nContent-Type: text/plain\r\n",
                )
            writer.write(f"{head}Content-Length: {len(body)}\r\n\r\n".encode("latin-1"))
            if method != "HEAD":
                writer.write(body)
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, ValueError, ConnectionError):
            pass
        finally:
            writer.close()
