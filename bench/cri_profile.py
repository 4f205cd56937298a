"""Profile linerd's CRI calls one at a time (docs/PERFORMANCE.md, bench/README.md (f)).

`sudo .venv/bin/python bench/cri_profile.py OUT_DIR [--pods N] [--per-pod K] [--calls C]
[--only A,B] [--containerd] [--strace]` starts linerd's CRI as (f) does
(tests/integration/cri_support.py) and runs N pods of K containers (py-spy meanwhile:
OUT_DIR/PodStarts.txt). Then for each bookkeeping call (ImageStatus, PodSandboxStatus,
ContainerStatus, ListContainers, ListPodSandbox, ListImages, Version), for CreateContainer +
RemoveContainer and for PullImage of an image whose layer is present: its mean latency and
the daemon's CPU per call (utime + stime) over C calls; then C calls more under py-spy
(OUT_DIR/<call>.txt, collapsed stacks with thread names; the top self-time frames printed);
with `--strace`, C more under `strace -f -c`. `--containerd`: the same against containerd's
CRI plugin, without py-spy.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench
from cri import cpu_seconds
from cri_support import (
    containerd_cri,
    ip_forward_kept,
    liner_cri,
)
from trees import served_images

from liner_api.runtime.v1 import api_pb2 as pb

STRACE = False


def timed_loop(
    name: str,
    calls: int,
    fn: Callable[[], Any],
    out: Path,
    pid: int,
    spy: str,
    reset: Callable[[], None] = lambda: None,
) -> None:
    """`reset` runs (untimed) before each round of `calls`."""
    raw = out / f"{name}.txt"
    # The daemon's CPU per call first, without py-spy (steadier than wall time on a busy host).
    reset()
    cpu0, t0 = cpu_seconds(pid), time.perf_counter()
    for _ in range(calls):
        fn()
    mean, cpu = (time.perf_counter() - t0) / calls, (cpu_seconds(pid) - cpu0) / calls
    if spy:
        reset()
        with bench.py_spy(spy, pid, raw):
            for _ in range(calls):
                fn()
    if STRACE:  # syscall time summary of one more round (-f: every thread)
        trace = out / f"{name}.strace"
        proc = subprocess.Popen(
            ["strace", "-f", "-c", "-w", "-o", str(trace), "-p", str(pid)],
            stderr=subprocess.DEVNULL,
        )
        reset()
        time.sleep(1.0)
        for _ in range(calls):
            fn()
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
    print(
        f"{name}: {mean * 1000:.2f} ms mean, daemon CPU {cpu * 1000:.2f} ms per call "
        f"over {calls} calls" + (f"; profile {raw}" if spy else "")
    )
    if not spy:
        return
    for frame, share in bench.top_frames(raw, 12):
        print(f"  {share * 100:5.1f}%  {frame}")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out", type=Path)
    p.add_argument("--pods", type=int, default=10)
    p.add_argument("--per-pod", type=int, default=2)
    p.add_argument("--calls", type=int, default=300)
    p.add_argument("--only", default="")
    p.add_argument("--containerd", action="store_true", help="containerd's CRI (no py-spy)")
    p.add_argument("--strace", action="store_true", help="also strace -c each call's loop")
    args = p.parse_args()
    global STRACE
    STRACE = args.strace
    args.out.mkdir(parents=True, exist_ok=True)
    only = set(args.only.split(",")) if args.only else None
    spy = "" if args.containerd else bench._py_spy()
    with served_images("liner-criprof-", 40) as served:
        work, pause, busybox = served.work, served.pause, served.busybox
        extra = served.pulls
        daemon = (
            containerd_cri(work / "containerd", pause, served.registry.host)
            if args.containerd
            else liner_cri(work / "liner", pause, served.registry.host, log_level="info")
        )
        with ip_forward_kept(), daemon as d:
            rt, im = d.runtime, d.images
            for ref in (pause, busybox):
                im.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=ref)), timeout=300)
            spec = pb.ImageSpec(image=busybox)

            def start_pod(i: int) -> tuple[str, pb.PodSandboxConfig, list[str]]:
                config = pb.PodSandboxConfig(
                    metadata=pb.PodSandboxMetadata(
                        name=f"p{i}", namespace="b", uid=str(uuid.uuid4())
                    ),
                    log_directory=str(work / "logs" / f"p{i}"),
                )
                sid = rt.RunPodSandbox(
                    pb.RunPodSandboxRequest(config=config), timeout=120
                ).pod_sandbox_id
                cids = []
                for j in range(args.per_pod):
                    cid = rt.CreateContainer(
                        pb.CreateContainerRequest(
                            pod_sandbox_id=sid,
                            config=pb.ContainerConfig(
                                metadata=pb.ContainerMetadata(name=f"c{j}"),
                                image=spec,
                                command=["/bin/sleep", "3600"],
                            ),
                            sandbox_config=config,
                        ),
                        timeout=60,
                    ).container_id
                    rt.StartContainer(pb.StartContainerRequest(container_id=cid), timeout=60)
                    cids.append(cid)
                return sid, config, cids

            with contextlib.ExitStack() as stack:
                if spy:  # what the event loop does while pods start (statuses wait behind it)
                    stack.enter_context(bench.py_spy(spy, d.pid, args.out / "PodStarts.txt"))
                with ThreadPoolExecutor(2) as pool:
                    pods = list(pool.map(start_pod, range(args.pods)))
            sid, sconfig, cids = pods[0]
            print(f"{args.pods} pods, {sum(len(c) for _, _, c in pods)} containers running")
            calls: dict[str, Callable[[], Any]] = {
                "ImageStatus": lambda: im.ImageStatus(pb.ImageStatusRequest(image=spec)),
                "PodSandboxStatus": lambda: rt.PodSandboxStatus(
                    pb.PodSandboxStatusRequest(pod_sandbox_id=sid)
                ),
                "ContainerStatus": lambda: rt.ContainerStatus(
                    pb.ContainerStatusRequest(container_id=cids[0])
                ),
                "ListContainers": lambda: rt.ListContainers(pb.ListContainersRequest()),
                "ListPodSandbox": lambda: rt.ListPodSandbox(pb.ListPodSandboxRequest()),
                "ListImages": lambda: im.ListImages(pb.ListImagesRequest()),
                "Version": lambda: rt.Version(pb.VersionRequest()),
            }
            for name, fn in calls.items():
                if only is None or name in only:
                    timed_loop(name, args.calls, fn, args.out, d.pid, spy)

            def create_remove() -> None:
                cid = rt.CreateContainer(
                    pb.CreateContainerRequest(
                        pod_sandbox_id=sid,
                        config=pb.ContainerConfig(
                            metadata=pb.ContainerMetadata(name=f"cr-{uuid.uuid4().hex[:8]}"),
                            image=spec,
                            command=["/bin/true"],
                        ),
                        sandbox_config=sconfig,
                    ),
                    timeout=60,
                ).container_id
                rt.RemoveContainer(pb.RemoveContainerRequest(container_id=cid), timeout=60)

            if only is None or "CreateRemove" in only:
                timed_loop("CreateRemove", args.calls // 10, create_remove, args.out, d.pid, spy)
            refs = iter(())

            def unpull() -> None:
                # The small images go again (their layer stays: busybox's image holds it).
                nonlocal refs
                for ref in extra:
                    im.RemoveImage(pb.RemoveImageRequest(image=pb.ImageSpec(image=ref)))
                refs = iter(extra)

            if only is None or "PullImage" in only:
                timed_loop(
                    "PullImage",
                    len(extra),
                    lambda: im.PullImage(
                        pb.PullImageRequest(image=pb.ImageSpec(image=next(refs))), timeout=300
                    ),
                    args.out,
                    d.pid,
                    spy,
                    unpull,
                )


if __name__ == "__main__":
    main()
