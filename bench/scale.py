"""(g) Scale: List latency with many containers running while clients create and remove others.

Issue 18 goal 4: with N (default 200) containers running, p99 of Containers/List, Tasks/List
(containerd's API) and the CRI's ListContainers ≤ 50 ms while C (default 10) clients create
and remove containers, beside containerd under the same load and the same clients.

containerd's API, per daemon (bench/bench.py's daemons, the real `ctr` through nsenter):

1. N x `ctr run -d busybox scale-<i> /bin/sleep 3600`, PARALLEL at a time (not timed).
2. The daemon's PSS and its helpers' PSS (conmon / containerd-shim-runc-v2) with N running.
3. For SECONDS: C writer threads each loop `ctr run -d` → `ctr tasks rm -f` (kills and
   waits) → `ctr containers rm` on their own ids, while a measuring client, a long-lived
   gRPC channel with the suite's stubs (as a kubelet or a monitoring agent keeps one), calls
   Containers/List in a loop and Tasks/List in another (a thread each), each call timed, a
   short pause between calls.
4. Everything removed.

The CRI, per daemon (bench/cri.py's harness): N/2 pods of 2 containers (pods started 2 at a
time as (f) starts them), then for SECONDS C writer threads each loop CreateContainer →
StartContainer → StopContainer(timeout 0) → RemoveContainer in a pod of their own, while the
measuring client times ListContainers (and ListPodSandbox, information).

Reported per call and daemon: p50, p99 and max of the samples, and how many samples and
writer cycles there were.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import cri
import grpc
from procs import mem_kb, pss_mb, run_delay_s

from liner_api.containerd.services.containers.v1 import containers_pb2, containers_pb2_grpc
from liner_api.containerd.services.tasks.v1 import tasks_pb2, tasks_pb2_grpc
from liner_api.runtime.v1 import api_pb2 as pb

PARALLEL = 4  # ctr runs at a time while filling up
PAUSE = 0.02  # seconds between the measuring client's rounds
NS_HEADER = "containerd-namespace"
# (what, pid) -> a context that profiles that process meanwhile (bench.py's py-spy), or none
Profiler = Callable[[str, int], contextlib.AbstractContextManager[None]]


def no_profile(what: str, pid: int) -> contextlib.AbstractContextManager[None]:
    return contextlib.nullcontext()


class CtrDaemon(Protocol):
    name: str
    address: str
    pid: int

    def ctr(self, *args: str, check: bool = True, timeout: float = 300) -> str: ...

    def helpers(self) -> list[int]: ...


@dataclass(frozen=True)
class Load:
    running: int = 200  # containers running while measured
    writers: int = 10  # clients creating and removing containers meanwhile
    seconds: float = 30.0


@dataclass
class Series:
    """Latencies (s) of one call under load."""

    samples: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # failed calls (not in the samples)

    def quantile(self, q: float) -> float:
        xs = sorted(self.samples)
        return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else 0.0


@dataclass
class Outcome:
    # (key, label, unit, daemon, value): what bench.py adds to its results
    samples: list[tuple[str, str, str, str, float]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def add(self, key: str, label: str, unit: str, daemon: str, value: float) -> None:
        self.samples.append((key, label, unit, daemon, value))

    def series(self, key: str, label: str, daemon: str, s: Series) -> None:
        for q, name in ((0.5, "p50"), (0.99, "p99")):
            self.add(f"{key}_{name}", f"{label} {name}", "ms", daemon, s.quantile(q))
        self.add(f"{key}_max", f"{label} max", "ms", daemon, max(s.samples, default=0.0))
        self.add(f"{key}_n", f"{label} samples", "n", daemon, len(s.samples))
        if s.errors:
            self.add(f"{key}_failed", f"{label} failed calls", "n", daemon, len(s.errors))
            self.errors += [f"{label} ({daemon}): {e}" for e in s.errors[:3]]


class Writers:
    """C threads looping `cycle(thread, k)` until stopped; counts cycles, keeps errors."""

    def __init__(self, n: int, cycle: Callable[[int, int], None]) -> None:
        self.stop = threading.Event()
        self.cycles = 0
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._cycle = cycle
        self._threads = [threading.Thread(target=self._run, args=(t,)) for t in range(n)]

    def _run(self, t: int) -> None:
        k = 0
        while not self.stop.is_set():
            try:
                self._cycle(t, k)
            except Exception as e:  # a failed cycle is reported, the load goes on
                with self._lock:
                    self.errors.append(str(e)[-400:])
                if len(self.errors) > 50:
                    return
            with self._lock:
                self.cycles += 1
            k += 1

    def __enter__(self) -> Writers:
        for th in self._threads:
            th.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for th in self._threads:
            th.join()


class RunQueueWait:
    """How long the daemon's threads waited for a CPU while measured (schedstat's run
    delay): what a List's tail under load is made of when the daemon's own work is not."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def __enter__(self) -> RunQueueWait:
        self._before = run_delay_s(self.pid)
        self._t0 = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        after = run_delay_s(self.pid)
        self.seconds = time.monotonic() - self._t0
        # a thread made meanwhile waited all its run delay within the window
        self.all = sum(v - self._before.get(t, 0.0) for t, v in after.items())
        self.main = after.get(self.pid, 0.0) - self._before.get(self.pid, 0.0)

    def add(self, out: Outcome, key: str, label: str, daemon: str) -> None:
        per_s = 1e3 / self.seconds
        out.add(f"{key}_wait", f"{label}: its threads' run-queue wait", "ms/s", daemon,
                self.all * per_s)  # fmt: skip
        out.add(f"{key}_wait_main", f"{label}: its main thread's run-queue wait", "ms/s",
                daemon, self.main * per_s)  # fmt: skip


def measure(calls: dict[str, Callable[[], Any]], seconds: float) -> dict[str, Series]:
    """Each call in a loop of its own (one thread per call, the channel shared), timed, for
    `seconds`: a slow call does not thin out the other's samples."""
    out = {name: Series() for name in calls}
    for fn in calls.values():  # not timed: the channel's connection, the first call's setup
        with contextlib.suppress(grpc.RpcError):
            fn()
    deadline = time.monotonic() + seconds

    def loop(name: str, fn: Callable[[], Any]) -> None:
        while time.monotonic() < deadline:
            t0 = time.perf_counter()
            try:
                fn()
            except grpc.RpcError as e:  # counted and shown: a List must not fail under load
                out[name].errors.append(f"{e.code()}: {e.details()}")
            else:
                out[name].samples.append(time.perf_counter() - t0)
            time.sleep(PAUSE)

    threads = [threading.Thread(target=loop, args=item) for item in calls.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


# ------------------------------------------------------------------------ containerd's API


def bench_api(
    daemons: list[CtrDaemon], image: str, load: Load, log: Any, profile: Profiler = no_profile
) -> Outcome:
    out = Outcome()
    for d in daemons:
        try:
            _api_one(d, image, load, out, log, profile)
        except (RuntimeError, grpc.RpcError) as e:
            out.errors.append(f"(g) {d.name}: {str(e)[-800:]}")
            log(f"(g) {d.name} failed: {str(e)[-800:]}")
    return out


def _api_one(
    d: CtrDaemon, image: str, load: Load, out: Outcome, log: Any, profile: Profiler
) -> None:
    n = load.running
    ids = [f"scale-{i}" for i in range(n)]
    log(f"(g) {d.name}: starting {n} containers")
    t0 = time.monotonic()
    with ThreadPoolExecutor(PARALLEL) as pool:
        list(pool.map(lambda cid: d.ctr("run", "-d", image, cid, "/bin/sleep", "3600"), ids))
    log(f"(g) {d.name}: {n} running after {time.monotonic() - t0:.1f}s")
    try:
        helpers = d.helpers()
        pss = {"daemon": pss_mb([d.pid]), "helpers": pss_mb(helpers)}
        out.add("scale_pss_daemon", f"(g) PSS daemon, {n} running", "MB", d.name, pss["daemon"])
        out.add("scale_pss_helpers", f"(g) PSS helpers, {n} running", "MB", d.name, pss["helpers"])
        out.add(
            "scale_pss_node", f"(g) node PSS (daemon + helpers), {n} running", "MB", d.name,
            sum(pss.values()),
        )  # fmt: skip
        out.add("scale_helpers", f"(g) helpers, {n} running", "n", d.name, len(helpers))
        rss = mem_kb(d.pid).get("rss", 0) / 1024
        out.add("scale_rss_daemon", f"(g) RSS daemon, {n} running", "MB", d.name, rss)

        def cycle(t: int, k: int) -> None:
            cid = f"churn-{t}-{k}"
            d.ctr("run", "-d", image, cid, "/bin/sleep", "3600")
            d.ctr("tasks", "rm", "-f", cid)
            d.ctr("containers", "rm", cid)

        md = ((NS_HEADER, "bench"),)
        with grpc.insecure_channel(f"unix://{d.address}") as ch:
            containers = containers_pb2_grpc.ContainersStub(ch)
            tasks = tasks_pb2_grpc.TasksStub(ch)

            def list_containers() -> None:
                r = containers.List(containers_pb2.ListContainersRequest(), metadata=md, timeout=30)
                if len(r.containers) < n:
                    raise RuntimeError(f"Containers/List: {len(r.containers)} of {n}")

            def list_tasks() -> None:
                r = tasks.List(tasks_pb2.ListTasksRequest(), metadata=md, timeout=30)
                if len(r.tasks) < n:
                    raise RuntimeError(f"Tasks/List: {len(r.tasks)} of {n}")

            calls = {"Containers/List": list_containers, "Tasks/List": list_tasks}
            idle = measure(calls, 3)
            with (
                Writers(load.writers, cycle) as w,
                profile(f"api-{d.name}", d.pid),
                RunQueueWait(d.pid) as waited,
            ):
                busy = measure(calls, load.seconds)
        for name, s in idle.items():
            key = name.replace("/", "_").lower()
            out.series(f"scale_idle_{key}", f"(g) {name}, {n} running, idle", d.name, s)
        for name, s in busy.items():
            key = name.replace("/", "_").lower()
            label = f"(g) {name}, {n} running, {load.writers} writers"
            out.series(f"scale_{key}", label, d.name, s)
        out.add("scale_cycles", f"(g) writer cycles in {load.seconds:.0f}s", "n", d.name, w.cycles)
        waited.add(out, "scale", f"(g) the daemon, {load.writers} writers", d.name)
        out.errors += [f"(g) {d.name} writer: {e}" for e in w.errors[:5]]
        log(
            f"(g) {d.name}: "
            + ", ".join(
                f"{k} p50 {s.quantile(0.5) * 1e3:.1f} p99 {s.quantile(0.99) * 1e3:.1f} ms"
                for k, s in busy.items()
            )
            + f", {w.cycles} writer cycles, {len(w.errors)} errors"
        )
    finally:
        _remove(d, ids)


def _remove(d: CtrDaemon, ids: list[str]) -> None:
    def rm(cid: str) -> None:
        d.ctr("tasks", "rm", "-f", cid, check=False)
        d.ctr("containers", "rm", cid, check=False)

    with ThreadPoolExecutor(PARALLEL) as pool:
        list(pool.map(rm, ids))
    for row in d.ctr("containers", "ls", "-q").split():  # writers' leftovers
        rm(row)


# ---------------------------------------------------------------------------------- the CRI


def bench_cri(
    reg: Any,
    work: Path,
    load: Load,
    with_containerd: bool,
    log: Any,
    profile: Profiler = no_profile,
) -> Outcome:
    """N/2 pods of 2 in each CRI daemon, ListContainers timed while writers churn."""
    out = Outcome()
    images_dir = work / "scale-cri-images"
    images_dir.mkdir(parents=True, exist_ok=True)
    pause = cri.push_pause_image(reg, images_dir)
    busybox = cri.push_busybox_image(reg, images_dir, "bench/cri-busybox").ref()
    kinds = [cri.LINER]
    if with_containerd:
        if why := cri.missing_containerd():
            log(f"(g) containerd's CRI left out: {why}")
        else:
            kinds.append(cri.CONTAINERD)
    shape = cri.Shape(pods=max(1, load.running // 2), per_pod=2)
    with cri.ip_forward_kept():
        for kind in kinds:
            base = work / f"scale-cri-{kind}"
            base.mkdir()
            try:
                with cri._daemon(kind, base, pause, reg) as d:
                    _cri_one(d, busybox, base, shape, load, out, log, profile)
            except (grpc.RpcError, RuntimeError, AssertionError) as e:
                out.errors.append(f"(g) CRI {kind}: {str(e)[-800:]}")
                log(f"(g) CRI {kind} failed: {str(e)[-800:]}")
    return out


def _cri_one(
    d: cri.CriDaemon,
    image: str,
    base: Path,
    shape: cri.Shape,
    load: Load,
    out: Outcome,
    log: Any,
    profile: Profiler,
) -> None:
    for ref in (d.sandbox_image, image):
        d.images.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=ref)), timeout=300)
    driver = cri.Driver(d, cri.Outcome(), image, base / "pod-logs", shape)
    pods = [cri.Pod(f"scale-{i}", driver.pod_config(i)) for i in range(shape.pods)]
    n = shape.pods * shape.per_pod
    log(f"(g) CRI {d.kind}: starting {shape.label}")
    t0 = time.monotonic()
    with ThreadPoolExecutor(cri.PARALLEL) as pool:
        list(pool.map(driver.start, pods))
    log(f"(g) CRI {d.kind}: {n} running after {time.monotonic() - t0:.1f}s")
    rt = d.runtime
    # Each writer churns in a pod of its own, so the N stay untouched.
    churn_pods = [cri.Pod(f"churn-{t}", driver.pod_config(1000 + t)) for t in range(load.writers)]
    for p in churn_pods:
        p.id = rt.RunPodSandbox(
            pb.RunPodSandboxRequest(config=p.config), timeout=120
        ).pod_sandbox_id
    spec = pb.ImageSpec(image=image)

    def cycle(t: int, k: int) -> None:
        pod = churn_pods[t]
        config = pb.ContainerConfig(
            metadata=pb.ContainerMetadata(name=f"w{k}"),
            image=spec,
            command=["/bin/sh", "-c", cri.SCRIPT],
            log_path=f"w{k}.log",
        )
        cid = rt.CreateContainer(
            pb.CreateContainerRequest(
                pod_sandbox_id=pod.id, config=config, sandbox_config=pod.config
            ),
            timeout=60,
        ).container_id
        rt.StartContainer(pb.StartContainerRequest(container_id=cid), timeout=60)
        rt.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=0), timeout=60)
        rt.RemoveContainer(pb.RemoveContainerRequest(container_id=cid), timeout=60)

    def list_containers() -> None:
        r = rt.ListContainers(pb.ListContainersRequest(), timeout=30)
        if len(r.containers) < n:
            raise RuntimeError(f"ListContainers: {len(r.containers)} of {n}")

    def list_pods() -> None:
        rt.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=30)

    calls = {"ListContainers": list_containers, "ListPodSandbox": list_pods}
    idle = measure(calls, 3)
    with (
        Writers(load.writers, cycle) as w,
        profile(f"cri-{d.kind}", d.pid),
        RunQueueWait(d.pid) as waited,
    ):
        busy = measure(calls, load.seconds)
    for name, s in idle.items():
        out.series(
            f"scale_idle_cri_{name.lower()}", f"(g) CRI {name}, {n} running, idle", d.kind, s
        )
    for name, s in busy.items():
        label = f"(g) CRI {name}, {n} running, {load.writers} writers"
        out.series(f"scale_cri_{name.lower()}", label, d.kind, s)
    out.add(
        "scale_cri_cycles", f"(g) CRI writer cycles in {load.seconds:.0f}s", "n", d.kind, w.cycles
    )
    waited.add(out, "scale_cri", f"(g) the CRI daemon, {load.writers} writers", d.kind)
    out.errors += [f"(g) CRI {d.kind} writer: {e}" for e in w.errors[:5]]
    log(
        f"(g) CRI {d.kind}: "
        + ", ".join(
            f"{k} p50 {s.quantile(0.5) * 1e3:.1f} p99 {s.quantile(0.99) * 1e3:.1f} "
            f"max {max(s.samples) * 1e3:.1f} ms ({len(s.samples)})"
            for k, s in busy.items()
        )
        + f", {w.cycles} writer cycles, {len(w.errors)} errors"
    )
    # Stopped and removed in parallel (the harness's own clean-up goes one by one).
    with ThreadPoolExecutor(cri.PARALLEL) as pool:
        list(pool.map(driver.stop, pods + churn_pods))
