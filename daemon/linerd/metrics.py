"""Prometheus metrics, served at /v1/metrics on the configured address (as containerd's).

Label values are bounded: gRPC service, method and code, pull outcomes, policy verdicts,
states. Never image names, references or container ids.

Calls and pulls are counted in plain Python objects; prometheus_client (~1 MB, ~0.1 s of
imports) is loaded only when metrics are rendered, so a daemon without a metrics address never
loads it. The rendered families and samples are the ones prometheus_client's own Counter and
Histogram produce (`_total`, `_bucket`, `_count`, `_sum`, `_created`).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import math
import os
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import structlog

from linerd.runtime import ProcessState, TaskRuntime, TaskStatus

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import Metric

log = structlog.get_logger("linerd.metrics")
T = TypeVar("T")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_BYTES_BUCKETS = [1 << n for n in range(10, 36, 2)]  # 1 KiB .. 32 GiB
_SECONDS_BUCKETS = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300]


class _Series:
    """One label set of a counter or histogram (`bounds` empty: a counter)."""

    __slots__ = ("buckets", "created", "sum")

    def __init__(self, buckets: int) -> None:
        self.created = time.time()
        self.buckets = [0] * buckets
        self.sum = 0.0


class _Family:
    """A counter (no bounds) or a histogram, with its label sets; observed from any thread."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        bounds: Sequence[float] | None = None,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        # Histograms end with +Inf, as prometheus_client's do.
        self.bounds = [*bounds, math.inf] if bounds is not None else []
        self._series: dict[tuple[str, ...], _Series] = {}
        self._lock = threading.Lock()
        if not self.labelnames:  # created at once, as prometheus_client does
            self._series[()] = _Series(len(self.bounds))

    def _get(self, labels: tuple[str, ...]) -> _Series:
        series = self._series.get(labels)
        if series is None:
            series = self._series.setdefault(labels, _Series(len(self.bounds)))
        return series

    def inc(self, *labels: str) -> None:
        with self._lock:
            self._get(labels).sum += 1

    def observe(self, amount: float, *labels: str) -> None:
        with self._lock:
            series = self._get(labels)
            series.sum += amount
            series.buckets[bisect.bisect_left(self.bounds, amount)] += 1

    def series(self, *labels: str) -> _Series:
        """One label set's series, for a caller that observes it often (`add`)."""
        with self._lock:
            return self._get(labels)

    def add(self, series: _Series, amount: float) -> None:
        """`inc` (a counter: by `amount`) or `observe` of a series from `series`."""
        with self._lock:
            series.sum += amount
            if self.bounds:
                series.buckets[bisect.bisect_left(self.bounds, amount)] += 1

    def metric(self) -> Metric:
        from prometheus_client.core import Metric
        from prometheus_client.utils import floatToGoString

        with self._lock:
            series = [(k, v.created, list(v.buckets), v.sum) for k, v in self._series.items()]
        if not self.bounds:
            metric = Metric(self.name, self.documentation, "counter")
            for labels, created, _, total in series:
                named = dict(zip(self.labelnames, labels, strict=True))
                metric.add_sample(f"{self.name}_total", named, total)
                metric.add_sample(f"{self.name}_created", named, created)
            return metric
        metric = Metric(self.name, self.documentation, "histogram")
        for labels, created, buckets, total in series:
            named = dict(zip(self.labelnames, labels, strict=True))
            acc = 0
            for bound, count in zip(self.bounds, buckets, strict=True):
                acc += count
                le = {**named, "le": floatToGoString(bound)}
                metric.add_sample(f"{self.name}_bucket", le, acc)
            metric.add_sample(f"{self.name}_count", named, acc)
            metric.add_sample(f"{self.name}_sum", named, total)
            metric.add_sample(f"{self.name}_created", named, created)
        return metric


class _Histogram:
    """An unlabelled histogram's `observe` (what the puller is handed)."""

    def __init__(self, family: _Family) -> None:
        self._family = family

    def observe(self, amount: float) -> None:
        self._family.observe(amount)


class _Families:
    """The recorded families, as a prometheus collector."""

    def __init__(self, families: Sequence[_Family]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return [f.metric() for f in self._families]


class _StoreCollector:
    """Sizes read when scraped: content store bytes and blobs, and per-snapshotter usage."""

    def __init__(self, blobs: Path, snapshot_sizes: Callable[[], dict[str, tuple[int, int]]]):
        self._blobs = blobs
        self._snapshot_sizes = snapshot_sizes

    def collect(self) -> Iterable[Metric]:
        from prometheus_client.core import GaugeMetricFamily

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


class _TaskCollector:
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
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

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
        self.grpc_requests = _Family(
            "liner_grpc_requests", "gRPC calls handled", ["service", "method", "code"]
        )
        self.grpc_seconds = _Family(
            "liner_grpc_request_duration_seconds",
            "gRPC call latency",
            ["service", "method"],
            _SECONDS_BUCKETS,
        )
        self.pulls = _Family("liner_pulls", "Image pulls by outcome", ["outcome"])
        self.pull_bytes = _Family("liner_pull_bytes", "Bytes fetched per pull", (), _BYTES_BUCKETS)
        self.pull_seconds = _Family(
            "liner_pull_duration_seconds", "Pull duration", (), _SECONDS_BUCKETS
        )
        unpack = _Family(
            "liner_unpack_duration_seconds", "Time to unpack one layer", (), _SECONDS_BUCKETS
        )
        self.unpack_seconds = _Histogram(unpack)
        self.policy_verdicts = _Family(
            "liner_policy_verdicts",
            "Signature policy verdicts on images entering the store",
            ["verdict"],
        )
        self._families = [
            self.grpc_requests,
            self.grpc_seconds,
            self.pulls,
            self.pull_bytes,
            self.pull_seconds,
            unpack,
            self.policy_verdicts,
        ]
        self._collectors: list[Any] = []
        self._registry: CollectorRegistry | None = None
        self._calls: dict[tuple[str, str], tuple[_Series, _Series]] = {}

    def add_stores(
        self, blobs: Path, snapshot_sizes: Callable[[], dict[str, tuple[int, int]]]
    ) -> None:
        self._add(_StoreCollector(blobs, snapshot_sizes))

    def add_tasks(
        self, runtime: TaskRuntime, loop: asyncio.AbstractEventLoop, containers: Callable[[], int]
    ) -> None:
        self._add(_TaskCollector(runtime, loop, containers))

    def _add(self, collector: Any) -> None:
        self._collectors.append(collector)
        if self._registry is not None:
            self._registry.register(collector)

    @property
    def registry(self) -> CollectorRegistry:
        """prometheus_client's registry, made (and the library imported) on first use."""
        if self._registry is None:
            from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector

            registry = CollectorRegistry()
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)
            registry.register(_Families(self._families))  # type: ignore[arg-type]
            for collector in self._collectors:
                registry.register(collector)
            self._registry = registry
        return self._registry

    def observe_call(self, full_method: str, code: str, seconds: float) -> None:
        # Every gRPC call comes here: its two series are found once per method and code.
        series = self._calls.get((full_method, code))
        if series is None:
            service, _, method = full_method.lstrip("/").partition("/")
            series = self._calls[full_method, code] = (
                self.grpc_requests.series(service, method, code),
                self.grpc_seconds.series(service, method),
            )
        self.grpc_requests.add(series[0], 1)
        self.grpc_seconds.add(series[1], seconds)

    def observe_pull(self, ok: bool, fetched: int, seconds: float) -> None:
        self.pulls.inc("success" if ok else "failure")
        if ok:
            self.pull_bytes.observe(fetched)
            self.pull_seconds.observe(seconds)

    def observe_verdict(self, accepted: bool) -> None:
        """One signature policy verdict: `accepted` or `rejected` (cached ones count too)."""
        self.policy_verdicts.inc("accepted" if accepted else "rejected")

    def render(self) -> bytes:
        from prometheus_client import generate_latest

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
