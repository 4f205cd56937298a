"""A/B two linerd trees' CRI read calls side by side (docs/PERFORMANCE.md, eighth session).

`.venv/bin/python bench/cri_ab.py A_TREE B_TREE [--pods N] [--per-pod K] [--calls C]
[--rounds R]`: A_TREE and B_TREE are source trees (`git archive <commit> | tar -x -C DIR`);
each daemon runs with its tree first on PYTHONPATH. Both daemons get the same N pods of K
containers; then for each bookkeeping call, R rounds of C calls on each daemon, the order
alternating per round, so the machine's load drifts over both alike (other engineers share
these cores); the Lists also as kubelet filters them (running containers, one pod's, ready
pods). Printed per call: the daemons' CPU per call (utime + stime) and mean wall time,
and B / A.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: F401  (puts the tests' harnesses on sys.path)
from cri import cpu_seconds
from cri_support import ip_forward_kept
from trees import served_images, tree_daemon

from liner_api.runtime.v1 import api_pb2 as pb


def populate(d: Any, busybox: str, pause: str, work: Path, pods: int, per_pod: int) -> dict:
    rt, im = d.runtime, d.images
    for ref in (pause, busybox):
        im.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=ref)), timeout=300)
    spec = pb.ImageSpec(image=busybox)

    def start_pod(i: int) -> tuple[str, list[str]]:
        config = pb.PodSandboxConfig(
            metadata=pb.PodSandboxMetadata(name=f"p{i}", namespace="b", uid=str(uuid.uuid4())),
            log_directory=str(work / "logs" / f"p{i}"),
        )
        sid = rt.RunPodSandbox(pb.RunPodSandboxRequest(config=config), timeout=120).pod_sandbox_id
        cids = []
        for j in range(per_pod):
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
        return sid, cids

    with ThreadPoolExecutor(2) as pool:
        started = list(pool.map(start_pod, range(pods)))
    sid, cids = started[0]
    return {
        "ImageStatus": lambda: im.ImageStatus(pb.ImageStatusRequest(image=spec)),
        "PodSandboxStatus": lambda: rt.PodSandboxStatus(
            pb.PodSandboxStatusRequest(pod_sandbox_id=sid)
        ),
        "ContainerStatus": lambda: rt.ContainerStatus(
            pb.ContainerStatusRequest(container_id=cids[0])
        ),
        "ListContainers": lambda: rt.ListContainers(pb.ListContainersRequest()),
        "ListPodSandbox": lambda: rt.ListPodSandbox(pb.ListPodSandboxRequest()),
        # kubelet's filtered Lists: its running containers, one pod's, its ready pods.
        "ListContainers(running)": lambda: rt.ListContainers(
            pb.ListContainersRequest(
                filter=pb.ContainerFilter(state=pb.ContainerStateValue(state=pb.CONTAINER_RUNNING))
            )
        ),
        "ListContainers(pod)": lambda: rt.ListContainers(
            pb.ListContainersRequest(filter=pb.ContainerFilter(pod_sandbox_id=sid))
        ),
        "ListPodSandbox(ready)": lambda: rt.ListPodSandbox(
            pb.ListPodSandboxRequest(
                filter=pb.PodSandboxFilter(state=pb.PodSandboxStateValue(state=pb.SANDBOX_READY))
            )
        ),
        "ListImages": lambda: im.ListImages(pb.ListImagesRequest()),
        "Version": lambda: rt.Version(pb.VersionRequest()),
        # A kubelet exec probe's call (the CPU column is the daemon's only, not runc's).
        "ExecSync": lambda: rt.ExecSync(
            pb.ExecSyncRequest(container_id=cids[0], cmd=["/bin/true"], timeout=10), timeout=30
        ),
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("a", type=Path)
    p.add_argument("b", type=Path)
    p.add_argument("--pods", type=int, default=25)
    p.add_argument("--per-pod", type=int, default=2)
    p.add_argument("--calls", type=int, default=200)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--only", default="")
    args = p.parse_args()
    only = set(args.only.split(",")) if args.only else None
    with served_images("liner-criab-") as served:
        work, pause, busybox = served.work, served.pause, served.busybox
        with ip_forward_kept(), contextlib.ExitStack() as stack:
            daemons, calls = [], []
            for name, tree in (("A", args.a), ("B", args.b)):
                d = tree_daemon(stack, work / name, tree, pause, served.registry.host)
                daemons.append(d)
                calls.append(populate(d, busybox, pause, work / name, args.pods, args.per_pod))
            print(f"{args.pods} pods of {args.per_pod} in each of A={args.a} B={args.b}")
            for name in calls[0]:
                if only is not None and name not in only:
                    continue
                cpu, wall = [0.0, 0.0], [0.0, 0.0]
                for i in range(2):
                    for _ in range(20):
                        calls[i][name]()  # warm
                for r in range(args.rounds):
                    for i in (0, 1) if r % 2 == 0 else (1, 0):
                        fn, pid = calls[i][name], daemons[i].pid
                        c0, t0 = cpu_seconds(pid), time.perf_counter()
                        for _ in range(args.calls):
                            fn()
                        wall[i] += time.perf_counter() - t0
                        cpu[i] += cpu_seconds(pid) - c0
                n = args.calls * args.rounds
                a_cpu, b_cpu = cpu[0] / n * 1e3, cpu[1] / n * 1e3
                a_wall, b_wall = wall[0] / n * 1e3, wall[1] / n * 1e3
                print(
                    f"{name}: CPU A {a_cpu:.3f} B {b_cpu:.3f} ms (B/A {b_cpu / a_cpu:.2f}); "
                    f"wall A {a_wall:.3f} B {b_wall:.3f} ms (B/A {b_wall / a_wall:.2f})",
                    flush=True,
                )


if __name__ == "__main__":
    main()
