"""A/B two linerd trees' node memory (#18 goal 1), the trees alternated round by round.

`.venv/bin/python bench/mem_ab.py A_TREE [B_TREE] [--shape cri|ctr] [--rounds N]`: A_TREE and
B_TREE are source trees (`git archive <commit> | tar -x -C DIR`; B defaults to this checkout);
each daemon runs with its tree first on PYTHONPATH. Per round, A then B (B then A on odd
rounds), each on a fresh daemon:

- `cri` (goal 1's CRI row, (f) in kubelet's shape): a CRI linerd, PullImage of the pause and
  busybox images and of 2 more small images, then 30 pods of 2 containers (pid namespace per
  container: no pause), 2 at a time, each container started as (f) starts it;
- `ctr` (goal 1's (d) fresh row): a linerd with its CRI off (as the bench's), `ctr images pull`
  busybox, then 20 `ctr run -d` of it.

Then, SETTLE seconds later (past the heap trimmer), the daemon's smaps_rollup (PSS, its
anonymous and file-backed parts, RSS) and the helpers' (conmon's) PSS and anonymous PSS.
Other engineers share the machine: compare Pss_Anon within a run; the file-backed part moves
with whatever else maps the same files.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # also puts the tests' harnesses on sys.path
from cri import Driver, Outcome, Pod, Shape
from cri_support import ip_forward_kept
from procs import cmdlines, mem_kb
from trees import served_images, tree_code, tree_daemon

from liner_api.runtime.v1 import api_pb2 as pb

SETTLE = 3.0  # seconds: past linerd's heap trimmer (1 s after the last bulk call)
FIELDS = ("pss", "pss_anon", "pss_file", "rss")


def helper_pids(under: str) -> list[int]:
    return [
        pid
        for pid, argv in cmdlines()
        if os.path.basename(argv[0]).startswith("conmon") and any(under in a for a in argv)
    ]


def sample(pid: int, under: str) -> dict[str, float]:
    out = {f"daemon_{k}": v / 1024 for k, v in mem_kb(pid).items() if k in FIELDS}
    helpers = [mem_kb(p) for p in helper_pids(under)]
    out["helpers_n"] = len(helpers)
    out["helpers_pss"] = sum(h.get("pss", 0) for h in helpers) / 1024
    out["helpers_pss_anon"] = sum(h.get("pss_anon", 0) for h in helpers) / 1024
    return out


# --hold: seconds to keep the daemon up after its sample, to look into it (or until the file
# RELEASE exists; it is removed then).
HOLD = 0.0
RELEASE = Path("/tmp/liner-mem-ab-release")


def hold(out: dict[str, float], pid: int) -> dict[str, float]:
    if HOLD > 0:
        print(f"daemon {pid} up for {HOLD:.0f} s or until {RELEASE} exists", flush=True)
        deadline = time.monotonic() + HOLD
        while time.monotonic() < deadline and not RELEASE.exists():
            time.sleep(0.5)
        RELEASE.unlink(missing_ok=True)
    return out


def cri_round(work: Path, tree: Path | None, refs: dict[str, Any], pods: int) -> dict[str, float]:
    with contextlib.ExitStack() as stack:
        d = tree_daemon(stack, work, tree, refs["pause"], refs["registry"])
        shape = Shape(pods=pods, per_pod=2, pod_pid="container", pulls=len(refs["pulls"]))
        drv = Driver(d, Outcome(), refs["busybox"], work / "pod-logs", shape)
        for ref in (refs["pause"], refs["busybox"]):
            d.images.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=ref)), timeout=300)
        drv.pulls(refs["pulls"])
        pod_list = [Pod(f"bench-{i}", drv.pod_config(i)) for i in range(shape.pods)]
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(drv.start, pod_list))
        time.sleep(SETTLE)
        return hold(sample(d.pid, str(work)), d.pid)


def ctr_round(work: Path, tree: Path | None, busybox: str, n: int) -> dict[str, float]:
    with tree_code(tree):
        d = bench.LinerDaemon(work)
    try:
        d.ctr("images", "pull", "--plain-http", busybox)
        ids = []
        for k in range(n):
            cid = f"mem-{k}"
            d.ctr("run", "-d", busybox, cid, "/bin/sleep", "3600")
            ids.append(cid)
        time.sleep(SETTLE)
        out = hold(sample(d.pid, str(d.d.state)), d.pid)
        for cid in ids:
            d.ctr("tasks", "kill", "-s", "SIGKILL", cid)
        bench.wait_stopped(d, ids, timeout=120)
        for cid in ids:
            d.ctr("tasks", "rm", cid)
            d.ctr("containers", "rm", cid)
        return out
    finally:
        d.stop()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("a", type=Path)
    p.add_argument("b", type=Path, nargs="?")
    p.add_argument("--shape", choices=["cri", "ctr"], default="cri")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--pods", type=int, default=30)
    p.add_argument("--containers", type=int, default=20)
    p.add_argument("--hold", type=float, default=0.0)
    p.add_argument("--b-env", action="append", default=[], help="K=V in B's environment only")
    args = p.parse_args()
    b_env = dict(kv.split("=", 1) for kv in args.b_env)
    global HOLD
    HOLD = args.hold
    trees = {"A": args.a, "B": args.b}
    results: dict[str, list[dict[str, float]]] = {"A": [], "B": []}
    with served_images("liner-memab-", 2) as served:
        work = served.work
        refs = {
            "registry": served.registry.host,
            "pause": served.pause,
            "busybox": served.busybox,
            "pulls": served.pulls,
        }
        with ip_forward_kept():
            for r in range(args.rounds):
                for name in ("A", "B") if r % 2 == 0 else ("B", "A"):
                    base = work / f"{name}{r}"
                    for k, v in b_env.items():  # B's daemon alone gets them
                        if name == "B":
                            os.environ[k] = v
                        else:
                            os.environ.pop(k, None)
                    if args.shape == "cri":
                        res = cri_round(base, trees[name], refs, args.pods)
                    else:
                        base.mkdir()
                        res = ctr_round(base, trees[name], refs["busybox"], args.containers)
                    results[name].append(res)
                    print(
                        f"round {r} {name}: " + " ".join(f"{k} {v:.2f}" for k, v in res.items()),
                        f"load {os.getloadavg()[0]:.1f}",
                        flush=True,
                    )
                    shutil.rmtree(base, ignore_errors=True)
        for key in results["A"][0]:
            a = statistics.mean(r[key] for r in results["A"])
            b = statistics.mean(r[key] for r in results["B"])
            print(f"{key}: A {a:.2f} B {b:.2f} (B-A {b - a:+.2f})")


if __name__ == "__main__":
    main()
