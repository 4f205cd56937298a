"""A/B two linerd trees' CRI PullImage of a small image whose layer is present
(docs/PERFORMANCE.md, ninth session's "PullImage, round two").

`.venv/bin/python bench/cri_pull_ab.py A_TREE [B_TREE] [--rounds R] [--images N]
[--parallel P]`: A_TREE and B_TREE are source trees (`git archive <commit> | tar -x -C DIR`;
B defaults to this checkout), each daemon started as `cri_write_ab.py` starts them (its tree
first on PYTHONPATH). N small images (busybox's layer, each its own config) are pushed to a
loopback registry; both daemons pull busybox first, so the layer is present. Then R rounds,
the daemons' order alternating per round: RemoveImage of the N (untimed, then 0.5 s for what
it scheduled), then PullImage of each, timed, P at a time (default 1; (f)'s two workers pull
two at once). Printed: per round and daemon the median wall and the daemon's CPU per call
(utime + stime of its threads: 10 ms clock ticks, so N >= 30), then the medians over rounds.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: F401  (puts the tests' harnesses on sys.path)
from cri import cpu_seconds
from cri_support import ip_forward_kept
from trees import served_images, tree_daemon

from liner_api.runtime.v1 import api_pb2 as pb


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("a", type=Path)
    p.add_argument("b", type=Path, nargs="?")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--images", type=int, default=40)
    p.add_argument("--parallel", type=int, default=1, help="PullImages at a time")
    args = p.parse_args()
    with served_images("liner-cripab-", args.images) as served:
        work, pause, busybox = served.work, served.pause, served.busybox
        refs = served.pulls
        with ip_forward_kept(), contextlib.ExitStack() as stack:
            daemons = {
                name: tree_daemon(stack, work / name, tree, pause, served.registry.host)
                for name, tree in (("A", args.a), ("B", args.b))
            }
            for d in daemons.values():
                for ref in (pause, busybox, *refs):  # warm: every code path run once
                    d.images.PullImage(
                        pb.PullImageRequest(image=pb.ImageSpec(image=ref)), timeout=300
                    )
            walls: dict[str, list[float]] = {"A": [], "B": []}
            cpus: dict[str, list[float]] = {"A": [], "B": []}
            for r in range(args.rounds):
                for name in ("A", "B") if r % 2 == 0 else ("B", "A"):
                    d = daemons[name]
                    for ref in refs:
                        d.images.RemoveImage(pb.RemoveImageRequest(image=pb.ImageSpec(image=ref)))
                    time.sleep(0.5)

                    def timed(ref: str, d: object = d) -> float:
                        t0 = time.perf_counter()
                        d.images.PullImage(  # type: ignore[attr-defined]
                            pb.PullImageRequest(image=pb.ImageSpec(image=ref)), timeout=300
                        )
                        return time.perf_counter() - t0

                    cpu0 = cpu_seconds(d.pid)
                    with ThreadPoolExecutor(args.parallel) as pool:
                        times = list(pool.map(timed, refs))
                    cpu = (cpu_seconds(d.pid) - cpu0) / len(refs) * 1000
                    wall = statistics.median(times) * 1000
                    walls[name].append(wall)
                    cpus[name].append(cpu)
                    print(f"round {r} {name}: median wall {wall:6.2f} ms, CPU {cpu:6.2f} ms/call")
            wa, wb = (statistics.median(walls[n]) for n in "AB")
            ca, cb = (statistics.median(cpus[n]) for n in "AB")
            print(f"medians over {args.rounds} rounds of {len(refs)} calls:")
            print(f"  wall A {wa:6.2f}  B {wb:6.2f}  B/A {wb / wa:5.2f}")
            print(f"  CPU  A {ca:6.2f}  B {cb:6.2f}  B/A {cb / ca:5.2f}")


if __name__ == "__main__":
    main()
