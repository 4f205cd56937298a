"""(f) The CRI side by side: liner's and containerd's runtime.v1, driven in critest's shape.

Both daemons are started as the CRI test harness starts them (tests/integration/cri_support.py:
private root, state, socket and CNI network, the pause image from the bench's registry), one
after the other, and driven with the suite's stubs over their sockets. Per daemon:

1. PullImage of the pause image and of a busybox image (not timed: pods start warm).
2. PullImage of P distinct small images (busybox's layer, each its own config), 2 at a time,
   timed; then ListImages (LIST_CALLS times).
3. N pods, 2 at a time: RunPodSandbox → PodSandboxStatus → then per container (K per pod)
   ImageStatus → CreateContainer → StartContainer → ContainerStatus → ExecSync(`true`), each
   call timed; "a pod's start" adds up the first container's.
4. With the N pods running: the node's memory (PSS of the daemon + its per-pod helpers: conmon
   for liner, containerd-shim-runc-v2 for containerd, + liner's unpack zygote if up; the
   daemon's RSS apart). Then more containers (untimed, round-robin over the pods) until
   LIST_AT run; after LIST_SETTLE seconds, ListContainers and ListPodSandbox (LIST_CALLS
   each); and kubelet's relist:
   ListPodSandbox + ListContainers once a second for RELIST_SECONDS, the daemon's CPU
   (utime + stime of /proc/<pid>/stat over the window) as % of one core.
5. N pods, 2 at a time: StopContainer → RemoveContainer (each container) → StopPodSandbox →
   RemovePodSandbox.

The harness's context managers remove what is left and check for leaks (mounts, leases,
iptables rules, monitors, cgroups), then stop the daemon and delete the bridge.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from cri_support import (
    CONTAINERD,
    LINER,
    CriDaemon,
    containerd_cri,
    ip_forward_kept,
    liner_cri,
    missing_containerd,
    missing_for_pods,
    push_busybox_image,
    push_pause_image,
)
from procs import cmdlines, mem_kb, parent_of, pss_mb
from registry import Registry

from liner_api.runtime.v1 import api_pb2 as pb

PARALLEL = 2
LIST_CALLS = 20
# Seconds between the last untimed create and the timed List calls: the daemons' background
# work after a burst of creates (GC of the creates' leases, snapshot usage) is not a List's.
LIST_SETTLE = 3.0
LIST_AT = 100  # running containers when the List calls are timed (issue 18 goal 2)
RELIST_SECONDS = 30  # kubelet's relist window (issue 18 goal 4: at 100 pods, <= 2 % of a core)
STOP_TIMEOUT = 10  # seconds StopContainer gives the TERM (the container exits at once on it)
# The container's process: exits 0 on TERM, so StopContainer measures a real stop.
SCRIPT = "trap 'exit 0' TERM; sleep 3600 & wait"
START_CALLS = (
    "RunPodSandbox",
    "PodSandboxStatus",
    "ImageStatus",
    "CreateContainer",
    "StartContainer",
    "ContainerStatus",
    "ExecSync",
)
STOP_CALLS = ("StopContainer", "RemoveContainer", "StopPodSandbox", "RemovePodSandbox")
# "a pod's start": the calls a kubelet makes before the container runs
POD_START = ("RunPodSandbox", "ImageStatus", "CreateContainer", "StartContainer")


@dataclass
class Sample:
    key: str
    label: str
    unit: str  # "ms" (the value in seconds, shown in ms), "MB" or "n" (a count)
    daemon: str
    value: float


@dataclass
class Outcome:
    samples: list[Sample] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, key: str, label: str, unit: str, daemon: str, value: float) -> None:
        with self.lock:
            self.samples.append(Sample(key, label, unit, daemon, value))


def missing() -> str:
    """Why (f) cannot run here ("" if it can, liner at least)."""
    return missing_for_pods()


@dataclass(frozen=True)
class Shape:
    pods: int  # N pods, PARALLEL at a time
    per_pod: int = 1  # containers per pod (issue 18 goal 1 counts 30 pods of 2)
    # The pods' pid namespace: "pod" (shared: critest's shape; liner runs a pause) or
    # "container" (kubelet's without shareProcessNamespace; liner runs none).
    pod_pid: str = "pod"
    pulls: int = 0  # distinct small images pulled (PARALLEL at a time), then listed
    list_at: int = LIST_AT  # running containers for the List calls (0: as many as started)
    relist: float = RELIST_SECONDS  # seconds of once-a-second relist (0: none)

    @property
    def label(self) -> str:
        return f"{self.pods} pods" + (f" of {self.per_pod}" if self.per_pod > 1 else "")

    @property
    def pid_mode(self) -> int:
        return pb.CONTAINER if self.pod_pid == "container" else pb.POD


@dataclass
class Pod:
    name: str
    config: pb.PodSandboxConfig
    id: str = ""
    containers: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)  # fill's, stopped and removed untimed


class Driver:
    """One daemon's runtime.v1 calls, each timed into `out` as `(f) <Call>`."""

    def __init__(
        self, daemon: CriDaemon, out: Outcome, image: str, logs: Path, shape: Shape
    ) -> None:
        self.d = daemon
        self.out = out
        self.image = image
        self.logs = logs
        self.shape = shape

    def timed(self, call: str, fn: Callable[[], Any], label: str = "") -> tuple[Any, float]:
        t0 = time.perf_counter()
        result = fn()
        elapsed = time.perf_counter() - t0
        self.out.add(f"cri_{call}", label or f"(f) {call}", "ms", self.d.kind, elapsed)
        return result, elapsed

    def pod_config(self, i: int) -> pb.PodSandboxConfig:
        name = f"bench-{i}"
        return pb.PodSandboxConfig(
            metadata=pb.PodSandboxMetadata(name=name, namespace="bench", uid=str(uuid.uuid4())),
            log_directory=str(self.logs / f"{name}-{uuid.uuid4().hex[:6]}"),
            labels={"app": name},
            linux=pb.LinuxPodSandboxConfig(
                security_context=pb.LinuxSandboxSecurityContext(
                    namespace_options=pb.NamespaceOption(pid=self.shape.pid_mode)
                )
            ),
        )

    def start(self, pod: Pod) -> None:
        rt, spent = self.d.runtime, {}
        resp, spent["RunPodSandbox"] = self.timed(
            "RunPodSandbox",
            lambda: rt.RunPodSandbox(pb.RunPodSandboxRequest(config=pod.config), timeout=120),
        )
        pod.id = resp.pod_sandbox_id
        self.timed(
            "PodSandboxStatus",
            lambda: rt.PodSandboxStatus(
                pb.PodSandboxStatusRequest(pod_sandbox_id=pod.id), timeout=30
            ),
        )
        for j in range(self.shape.per_pod):
            self.start_container(pod, f"c{j}", spent)
            if j == 0:
                self.out.add(
                    "cri_pod_start",
                    "(f) a pod's start (Run+ImageStatus+Create+Start)",
                    "ms",
                    self.d.kind,
                    sum(spent[c] for c in POD_START),
                )

    def start_container(self, pod: Pod, name: str, spent: dict[str, float]) -> str:
        rt = self.d.runtime
        spec = pb.ImageSpec(image=self.image)
        _, spent["ImageStatus"] = self.timed(
            "ImageStatus",
            lambda: self.d.images.ImageStatus(pb.ImageStatusRequest(image=spec), timeout=30),
        )
        config = pb.ContainerConfig(
            metadata=pb.ContainerMetadata(name=name),
            image=spec,
            command=["/bin/sh", "-c", SCRIPT],
            log_path=f"{name}.log",
            # kubelet's way: the container in its pod's pid namespace mode.
            linux=pb.LinuxContainerConfig(
                security_context=pb.LinuxContainerSecurityContext(
                    namespace_options=pb.NamespaceOption(pid=self.shape.pid_mode)
                )
            ),
        )
        resp, spent["CreateContainer"] = self.timed(
            "CreateContainer",
            lambda: rt.CreateContainer(
                pb.CreateContainerRequest(
                    pod_sandbox_id=pod.id, config=config, sandbox_config=pod.config
                ),
                timeout=60,
            ),
        )
        cid = resp.container_id
        pod.containers.append(cid)
        _, spent["StartContainer"] = self.timed(
            "StartContainer",
            lambda: rt.StartContainer(pb.StartContainerRequest(container_id=cid), timeout=60),
        )
        self.timed(
            "ContainerStatus",
            lambda: rt.ContainerStatus(pb.ContainerStatusRequest(container_id=cid), timeout=30),
        )
        resp, _ = self.timed(
            "ExecSync",
            lambda: rt.ExecSync(
                pb.ExecSyncRequest(container_id=cid, cmd=["true"], timeout=30), timeout=60
            ),
        )
        if resp.exit_code != 0:
            raise RuntimeError(f"ExecSync true exited {resp.exit_code}: {resp.stderr!r}")
        return cid

    def stop(self, pod: Pod) -> None:
        rt = self.d.runtime
        sid = pod.id
        for cid in pod.extra:  # not the per-call rows: (f) times the pods' own containers
            rt.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=STOP_TIMEOUT),
                             timeout=120)  # fmt: skip
            rt.RemoveContainer(pb.RemoveContainerRequest(container_id=cid), timeout=60)
        for cid in pod.containers:
            self.timed(
                "StopContainer",
                lambda cid=cid: rt.StopContainer(
                    pb.StopContainerRequest(container_id=cid, timeout=STOP_TIMEOUT), timeout=120
                ),
            )
            self.timed(
                "RemoveContainer",
                lambda cid=cid: rt.RemoveContainer(
                    pb.RemoveContainerRequest(container_id=cid), timeout=60
                ),
            )
        self.timed(
            "StopPodSandbox",
            lambda: rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sid), timeout=120),
        )
        self.timed(
            "RemovePodSandbox",
            lambda: rt.RemovePodSandbox(
                pb.RemovePodSandboxRequest(pod_sandbox_id=sid), timeout=120
            ),
        )

    def pulls(self, refs: list[str]) -> None:
        """PullImage of each (PARALLEL at a time), then ListImages LIST_CALLS times."""

        def pull(ref: str) -> None:
            self.timed(
                "PullImage",
                lambda: self.d.images.PullImage(
                    pb.PullImageRequest(image=pb.ImageSpec(image=ref)), timeout=300
                ),
                "(f) PullImage (small image, local registry)",
            )

        with ThreadPoolExecutor(PARALLEL) as pool:
            list(pool.map(pull, refs))
        for _ in range(LIST_CALLS):
            self.timed(
                "ListImages",
                lambda: self.d.images.ListImages(pb.ListImagesRequest(), timeout=30),
                f"(f) ListImages, {len(refs) + 2} images",
            )

    def fill(self, pods: list[Pod]) -> None:
        """More containers (untimed), round-robin over the pods, until `list_at` run."""
        running = sum(len(p.containers) for p in pods)
        extra = [pods[i % len(pods)] for i in range(max(0, self.shape.list_at - running))]
        untimed = Outcome()  # their calls are not the per-call rows

        def add(args: tuple[int, Pod]) -> None:
            k, pod = args
            cid = Driver(self.d, untimed, self.image, self.logs, self.shape).start_container(
                pod, f"x{k}", {}
            )
            pod.containers.remove(cid)
            pod.extra.append(cid)

        with ThreadPoolExecutor(PARALLEL) as pool:
            list(pool.map(add, enumerate(extra)))

    def lists(self, pods: list[Pod]) -> None:
        rt = self.d.runtime
        time.sleep(LIST_SETTLE)
        containers = sum(len(p.containers) + len(p.extra) for p in pods)
        n_pods = len(pods)
        for _ in range(LIST_CALLS):
            resp, _ = self.timed(
                "ListContainers",
                lambda: rt.ListContainers(pb.ListContainersRequest(), timeout=30),
                f"(f) ListContainers, {containers} running",
            )
            if len(resp.containers) != containers:
                raise RuntimeError(f"ListContainers: {len(resp.containers)} of {containers}")
            resp, _ = self.timed(
                "ListPodSandbox",
                lambda: rt.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=30),
                f"(f) ListPodSandbox, {n_pods} pods running",
            )
            if len(resp.items) != n_pods:
                raise RuntimeError(f"ListPodSandbox: {len(resp.items)} of {n_pods}")

    def relist(self, pods: list[Pod]) -> None:
        """kubelet's relist: ListPodSandbox + ListContainers once a second; the daemon's CPU
        (user + system, /proc/<pid>/stat) over the window, as % of one core."""
        if self.shape.relist <= 0:
            return
        rt = self.d.runtime
        containers = sum(len(p.containers) + len(p.extra) for p in pods)
        t0, cpu0 = time.monotonic(), cpu_seconds(self.d.pid)
        tick = t0
        while tick - t0 < self.shape.relist:
            rt.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=30)
            rt.ListContainers(pb.ListContainersRequest(), timeout=30)
            tick += 1.0
            time.sleep(max(0.0, tick - time.monotonic()))
        cpu, wall = cpu_seconds(self.d.pid) - cpu0, time.monotonic() - t0
        self.out.add(
            "cri_relist_cpu",
            f"(f) relist CPU, % of a core ({len(pods)} pods, {containers} containers)",
            "%",
            self.d.kind,
            100 * cpu / wall,
        )

    def memory(self) -> None:
        """PSS (MB) of the daemon, of its helpers, of liner's zygote, and their sum."""
        base = str(self.d.base)
        helpers, zygotes = [], []
        for pid, argv in cmdlines():
            name = argv[0].rsplit("/", 1)[-1]
            if self.d.kind == LINER:
                if name.startswith("conmon") and any(base in a for a in argv):
                    helpers.append(pid)
                elif argv[1:3] == ["-m", "linerd.diff.zygote"] and parent_of(pid) == self.d.pid:
                    zygotes.append(pid)
            elif (
                name.startswith("containerd-shim") and self.d.socket in argv and "start" not in argv
            ):
                helpers.append(pid)

        parts = {
            "daemon": pss_mb([self.d.pid]),
            "helpers": pss_mb(helpers),
            "zygote": pss_mb(zygotes),
        }
        k, at = self.d.kind, self.shape.label
        self.out.add("cri_pss_daemon", f"(f) PSS daemon, {at}", "MB", k, parts["daemon"])
        self.out.add("cri_helpers", f"(f) helpers, {at}", "n", k, len(helpers))
        self.out.add("cri_pss_helpers", f"(f) PSS helpers, {at}", "MB", k, parts["helpers"])
        if zygotes:
            self.out.add("cri_pss_zygote", "(f) PSS unpack zygote", "MB", k, parts["zygote"])
        self.out.add("cri_pss_node", f"(f) node PSS, {at}", "MB", k, sum(parts.values()))
        mem = mem_kb(self.d.pid)
        # The file-backed part apart: lower while other processes map the same files.
        pss_file = mem.get("pss_file", 0) / 1024
        self.out.add("cri_pss_daemon_file", f"(f) PSS daemon file-backed, {at}", "MB", k, pss_file)
        self.out.add("cri_rss_daemon", f"(f) RSS daemon, {at}", "MB", k, mem.get("rss", 0) / 1024)

    def run(self, pulls: list[str]) -> None:
        for ref in (self.d.sandbox_image, self.image):
            self.d.images.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=ref)), timeout=300)
        if pulls:
            self.pulls(pulls)
        pods = [Pod(f"bench-{i}", self.pod_config(i)) for i in range(self.shape.pods)]
        with ThreadPoolExecutor(PARALLEL) as pool:
            list(pool.map(self.start, pods))
        self.memory()
        self.fill(pods)
        self.lists(pods)
        self.relist(pods)
        with ThreadPoolExecutor(PARALLEL) as pool:
            list(pool.map(self.stop, pods))


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (its own threads, not its children), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def _daemon(kind: str, base: Path, pause: str, reg: Registry) -> Iterator[CriDaemon]:
    if kind == LINER:
        with liner_cri(base, pause, reg.host, log_level="info") as d:
            yield d
    else:
        with containerd_cri(base, pause, reg.host) as d:
            yield d


def bench_cri(reg: Registry, work: Path, shape: Shape, with_containerd: bool, log: Any) -> Outcome:
    """Run (f) against liner and, when asked and installed, containerd."""
    out = Outcome()
    images_dir = work / "cri-images"
    images_dir.mkdir(parents=True, exist_ok=True)
    pause = push_pause_image(reg, images_dir)
    busybox = push_busybox_image(reg, images_dir, "bench/cri-busybox").ref()
    # Distinct images (their configs name their repository) sharing busybox's layer.
    pulls = [
        push_busybox_image(reg, images_dir, f"bench/cri-pull-{i}").ref() for i in range(shape.pulls)
    ]
    kinds = [LINER]
    if with_containerd:
        if why := missing_containerd():
            log(f"(f) containerd's CRI left out: {why}")
        else:
            kinds.append(CONTAINERD)
    with ip_forward_kept():
        for kind in kinds:
            log(f"(f) {shape.label}, {shape.pulls} pulls against {kind}'s CRI")
            base = work / f"cri-{kind}"
            base.mkdir()
            try:
                with _daemon(kind, base, pause, reg) as d:
                    Driver(d, out, busybox, base / "pod-logs", shape).run(pulls)
            except (grpc.RpcError, RuntimeError, AssertionError) as e:
                msg = f"(f) {kind}: {str(e)[-800:]}"
                out.errors.append(msg)
                log(f"failed: {msg}")
    return out
