"""A/B two linerd trees' CRI write calls, pod by pod (docs/PERFORMANCE.md, ninth session).

`.venv/bin/python bench/cri_write_ab.py A_TREE [B_TREE] [--pods N]`: A_TREE and B_TREE are
source trees (`git archive <commit> | tar -x -C DIR`; B defaults to this checkout); each
daemon runs with its tree first on PYTHONPATH. Then N pod cycles on each daemon, one at a
time, the order alternating per cycle, so the machine's load drifts over both alike (other
engineers share these cores). A cycle is critest's: RunPodSandbox (pid namespace POD: a
pause), ImageStatus, CreateContainer, StartContainer, StopContainer, RemoveContainer,
StopPodSandbox, RemovePodSandbox. Printed per call: the median wall time and the daemon's
mean CPU per call (utime + stime of its own threads; 10 ms clock ticks, so N >= 30), and B / A;
"a pod's start" adds up RunPodSandbox to StartContainer.

`--parallel 2` is critest's shape as bench.py's (f) runs it: each round starts 2 pods at once
on one daemon (then stops them, 2 at once), the daemons alternating per round. The calls
overlap, so the CPU column is then only the daemon's CPU per pod over the whole start phase
("a pod's start") and over the whole teardown ("a pod's teardown").
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: F401  (puts the tests' harnesses on sys.path)
from cri import cpu_seconds
from cri_support import ip_forward_kept
from trees import served_images, tree_daemon

from liner_api.runtime.v1 import api_pb2 as pb

CALLS = (
    "RunPodSandbox",
    "ImageStatus",
    "CreateContainer",
    "StartContainer",
    "PodStart",
    "StopContainer",
    "RemoveContainer",
    "StopPodSandbox",
    "RemovePodSandbox",
    "PodTeardown",
)
# Exits at once on TERM: StopContainer measures a real stop.
SCRIPT = "trap 'exit 0' TERM; sleep 3600 & wait"


class Recorder:
    def __init__(self) -> None:
        self.wall: dict[tuple[str, str], list[float]] = collections.defaultdict(list)
        self.cpu: dict[tuple[str, str], list[float]] = collections.defaultdict(list)
        self._mutex = threading.Lock()

    def timed(self, name: str, pid: int, call: str, fn: Callable[[], Any], cpu: bool = True) -> Any:
        """`fn()` timed; with `cpu`, the daemon's CPU too (not where other calls overlap)."""
        c0, t0 = cpu_seconds(pid) if cpu else 0.0, time.perf_counter()
        result = fn()
        self.add(name, call, time.perf_counter() - t0, cpu_seconds(pid) - c0 if cpu else None)
        return result

    def add(self, name: str, call: str, wall: float, cpu: float | None) -> None:
        with self._mutex:
            self.wall[(name, call)].append(wall)
            if cpu is not None:
                self.cpu[(name, call)].append(cpu)


def cycle(rec: Recorder, name: str, d: Any, image: str, work: Path, i: int) -> None:
    sid, cid = start_pod(rec, name, d, image, work, i)
    stop_pod(rec, name, d, sid, cid)


def start_pod(
    rec: Recorder, name: str, d: Any, image: str, work: Path, i: int, cpu: bool = True
) -> tuple[str, str]:
    rt, im = d.runtime, d.images
    ns = pb.NamespaceOption(pid=pb.POD)
    config = pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name=f"p{i}", namespace="b", uid=str(uuid.uuid4())),
        log_directory=str(work / "logs" / str(d.pid) / f"p{i}"),
        labels={"app": "x"},
        linux=pb.LinuxPodSandboxConfig(
            security_context=pb.LinuxSandboxSecurityContext(namespace_options=ns)
        ),
    )
    spec = pb.ImageSpec(image=image)
    container = pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name="c"),
        image=spec,
        command=["/bin/sh", "-c", SCRIPT],
        log_path="c.log",
        linux=pb.LinuxContainerConfig(
            security_context=pb.LinuxContainerSecurityContext(namespace_options=ns)
        ),
    )

    def timed(call: str, fn: Callable[[], Any]) -> Any:
        return rec.timed(name, d.pid, call, fn, cpu)  # cpu off: other pods' calls overlap

    c0, t0 = cpu_seconds(d.pid), time.perf_counter()
    sid = timed(
        "RunPodSandbox",
        lambda: rt.RunPodSandbox(pb.RunPodSandboxRequest(config=config), timeout=120),
    ).pod_sandbox_id
    timed("ImageStatus", lambda: im.ImageStatus(pb.ImageStatusRequest(image=spec), timeout=30))
    cid = timed(
        "CreateContainer",
        lambda: rt.CreateContainer(
            pb.CreateContainerRequest(pod_sandbox_id=sid, config=container, sandbox_config=config),
            timeout=60,
        ),
    ).container_id
    timed(
        "StartContainer",
        lambda: rt.StartContainer(pb.StartContainerRequest(container_id=cid), timeout=60),
    )
    rec.add(name, "PodStart", time.perf_counter() - t0, cpu_seconds(d.pid) - c0 if cpu else None)
    return sid, cid


def stop_pod(rec: Recorder, name: str, d: Any, sid: str, cid: str, cpu: bool = True) -> None:
    rt = d.runtime

    def timed(call: str, fn: Callable[[], Any]) -> Any:
        return rec.timed(name, d.pid, call, fn, cpu)  # cpu off: other pods' calls overlap

    c0, t0 = cpu_seconds(d.pid), time.perf_counter()
    timed(
        "StopContainer",
        lambda: rt.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=10), timeout=60),
    )
    timed(
        "RemoveContainer",
        lambda: rt.RemoveContainer(pb.RemoveContainerRequest(container_id=cid), timeout=60),
    )
    timed(
        "StopPodSandbox",
        lambda: rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sid), timeout=60),
    )
    timed(
        "RemovePodSandbox",
        lambda: rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sid), timeout=60),
    )
    rec.add(name, "PodTeardown", time.perf_counter() - t0, cpu_seconds(d.pid) - c0 if cpu else None)


def parallel_round(
    rec: Recorder, name: str, d: Any, image: str, work: Path, first: int, n: int
) -> None:
    """n pods started at once, then stopped at once; the daemon's CPU per pod of each phase."""
    with ThreadPoolExecutor(n) as pool:
        c0 = cpu_seconds(d.pid)
        started = list(
            pool.map(lambda k: start_pod(rec, name, d, image, work, first + k, cpu=False), range(n))
        )
        c1 = cpu_seconds(d.pid)
        list(pool.map(lambda ids: stop_pod(rec, name, d, *ids, cpu=False), started))
        c2 = cpu_seconds(d.pid)
    rec.cpu[(name, "PodStart")] += [(c1 - c0) / n] * n
    rec.cpu[(name, "PodTeardown")] += [(c2 - c1) / n] * n


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("a", type=Path)
    p.add_argument("b", type=Path, nargs="?")
    p.add_argument("--pods", type=int, default=40)
    p.add_argument("--parallel", type=int, default=1, help="pods at once per daemon (critest: 2)")
    args = p.parse_args()
    with served_images("liner-criwab-") as served:
        work, pause, busybox = served.work, served.pause, served.busybox
        with ip_forward_kept(), contextlib.ExitStack() as stack:
            daemons = {
                name: tree_daemon(stack, work / name, tree, pause, served.registry.host)
                for name, tree in (("A", args.a), ("B", args.b))
            }
            for d in daemons.values():
                for ref in (pause, busybox):
                    d.images.PullImage(
                        pb.PullImageRequest(image=pb.ImageSpec(image=ref)), timeout=300
                    )
            rec = Recorder()
            for i in range(2):  # warm-up: the images' users read, caches filled
                for name, d in daemons.items():
                    cycle(rec, "warm", d, busybox, work, 900 + 10 * i + len(name))
            for i in range(0, args.pods, args.parallel):
                for name in ("A", "B") if (i // args.parallel) % 2 == 0 else ("B", "A"):
                    if args.parallel > 1:
                        n = min(args.parallel, args.pods - i)
                        parallel_round(rec, name, daemons[name], busybox, work, i * 10, n)
                    else:
                        cycle(rec, name, daemons[name], busybox, work, i * 10 + len(name))
            walls = f"{'A wall':>8} {'B wall':>8} {'B/A':>5}"
            cpus = f"{'A cpu':>6} {'B cpu':>6} {'B/A':>5}"
            shape = f", {args.parallel} at once" if args.parallel > 1 else ""
            note = f"ms: median wall, mean daemon CPU; {args.pods} pods each{shape}"
            print(f"{'call':17} {walls}   {cpus}  ({note})")
            for call in CALLS:
                wa, wb = (statistics.median(rec.wall[(n, call)]) * 1000 for n in "AB")
                walls = f"{wa:8.2f} {wb:8.2f} {wb / wa:5.2f}"
                if not rec.cpu[("A", call)]:
                    print(f"{call:17} {walls}")
                    continue
                ca, cb = (statistics.mean(rec.cpu[(n, call)]) * 1000 for n in "AB")
                cpu_ratio = f"{cb / ca:5.2f}" if ca else "    -"
                print(f"{call:17} {walls}   {ca:6.2f} {cb:6.2f} {cpu_ratio}")


if __name__ == "__main__":
    main()
