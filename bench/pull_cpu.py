"""CPU and wall time of one pull operation per round, per daemon (docs/PERFORMANCE.md's ninth
session): steadier than the bench's wall times while other work shares the machine.

`sudo .venv/bin/python bench/pull_cpu.py OPERATION [--runs N] [--containerd] [--spy OUT]
[--cache DIR] [--before TREE]` starts linerd (and with `--containerd` containerd) as bench.py
does, against the bench's registry and images (built by a `bench.py --only a` or `--only h` run into
`--cache`, default bench/cache), moves each daemon with everything it forks (prestage and
unpack workers, the zygote) into a cgroup-v1 `cpuacct` group of its own, and runs the
operation N times per daemon, alternating, everything removed between rounds. Per round: the
wall time, the group's CPU (`cpuacct.usage`) and the daemon process's own (/proc stat).

Operations: `fetch-gzip`, `fetch-zstd` (`ctr content fetch` of deb-*), `ctrpull-gzip`,
`ctrpull-zstd` (`ctr images pull`), `lpull-gzip`, `lpull-zstd` (`liner images pull`, liner
only), `multi-ctr` (10 `ctr images pull` of multi-0..9 at once), `multi-tr` (the same
through liner's Transfer API, liner only). `--spy OUT`: py-spy linerd during each liner
round only (raw collapsed stacks with thread names, OUT.<round>). `--before TREE`: a second
linerd running TREE's code (`git archive <commit> | tar -x -C TREE`), named "before", in the
rotation too; the `liner` CLI of each liner daemon is then its own tree's (`python -m
liner.cli` with that tree first on PYTHONPATH), so an A/B covers the client's start-up.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import bench
import pulls
import trees
from registry import Registry

CPUACCT = Path("/sys/fs/cgroup/cpuacct")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for name in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{name}/stat").read_text()
        except OSError:
            continue
        kids.setdefault(int(stat.rpartition(")")[2].split()[1]), []).append(int(name))
    return kids


def cgroup_of(name: str, pid: int) -> Path:
    """A new cpuacct group holding `pid` and its descendants (new children follow them)."""
    group = CPUACCT / f"pull-cpu-{name}-{os.getpid()}"
    group.mkdir(exist_ok=True)
    kids, todo = _children(), [pid]
    while todo:
        p = todo.pop()
        try:
            (group / "cgroup.procs").write_text(str(p))
        except OSError:
            continue  # ended meanwhile
        todo.extend(kids.get(p, []))
    return group


def group_cpu(group: Path) -> float:
    return int((group / "cpuacct.usage").read_text()) / 1e9


def own_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


class TreeLiner(bench.LinerDaemon):
    """A linerd (and `liner` CLI) running the code of `tree`."""

    def __init__(self, base: Path, tree: Path, name: str) -> None:
        self.name = name
        with trees.tree_code(tree):
            super().__init__(base)
            env = dict(os.environ)
        # The tree's CLI: its start-up is part of an A/B of `liner images pull`.
        self.liner_cli = [sys.executable, "-m", "liner.cli"]
        self.liner_env = env


def operation(
    name: str, d: bench.Daemon, deb: dict[str, str], multi: list[str]
) -> Callable[[], object] | None:
    """The operation on daemon `d`; None when it is liner's only and `d` is not liner."""
    kind, _, tag = name.partition("-")
    ref = deb.get(f"deb-{tag}", "")
    liner_only = kind == "lpull" or name == "multi-tr"
    if liner_only and not isinstance(d, bench.LinerDaemon):
        return None
    if kind == "fetch":
        return lambda: d.ctr("content", "fetch", "--plain-http", ref)
    if kind == "ctrpull":
        return lambda: d.ctr("images", "pull", "--plain-http", ref)
    if kind == "lpull":
        return lambda: d.liner("images", "pull", "--plain-http", "--progress", "quiet", ref)  # type: ignore[attr-defined]
    if name == "multi-ctr":
        argvs = [d.ctr_argv("images", "pull", "--plain-http", r) for r in multi]
        return lambda: pulls._at_once(argvs, pulls._ctr_env())
    if name == "multi-tr":
        return lambda: pulls._client_pulls(d.address, multi)  # type: ignore[attr-defined]
    raise SystemExit(f"unknown operation {name!r}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("operation")
    p.add_argument("--runs", type=int, default=4)
    p.add_argument("--containerd", action="store_true")
    p.add_argument("--spy", help="py-spy linerd during its rounds into SPY.<round>")
    p.add_argument("--cache", type=Path, default=Path(__file__).resolve().parent / "cache")
    p.add_argument("--before", type=Path, help="a source tree to run as a second linerd")
    args = p.parse_args()
    meta = json.loads((args.cache / "layout.json").read_text())
    work = Path(tempfile.mkdtemp(prefix="pull-cpu-", dir="/dev/shm"))
    reg = Registry("open", workdir=args.cache / "registry")
    reg.start()
    daemons: list[bench.Daemon] = []
    groups: dict[str, Path] = {}
    try:
        images = bench.push_images(reg, args.cache / "layout", meta, False)
        multi = []
        if args.operation.startswith("multi"):
            layout = args.cache / "layout-pulls"
            multi = [
                reg.push_layout(layout, f"bench/multi-{i}:latest", tag=f"multi-{i}")
                for i in range(pulls.N_MULTI)
            ]
        if args.before:
            here = Path(__file__).resolve().parent.parent
            liner: bench.LinerDaemon = TreeLiner(work / "liner", here, "liner")
            daemons += [liner, TreeLiner(work / "before", args.before, "before")]
        else:
            liner = bench.LinerDaemon(work / "liner")
            daemons.append(liner)
        if args.containerd:
            daemons.append(bench.ContainerdDaemon(work / "containerd"))
        for d in daemons:
            groups[d.name] = cgroup_of(d.name, d.pid)  # type: ignore[attr-defined]
            d.ctr("images", "pull", "--plain-http", images.busybox)  # warm, as the bench
            bench.quiesce(d, 0)
        rounds: dict[str, list[tuple[float, float, float]]] = {d.name: [] for d in daemons}
        for i in range(args.runs):
            for d in bench.alternate(daemons, i):
                run = operation(args.operation, d, images.pulls, multi)
                if run is None:
                    continue
                spy = None
                if args.spy and d is liner:
                    spy = subprocess.Popen(
                        [str(Path(sys.executable).parent / "py-spy"), "record", "-p",
                         str(liner.pid), "-r", "200", "--threads", "-f", "raw",
                         "-o", f"{args.spy}.{i}"],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    )  # fmt: skip
                    time.sleep(0.5)  # attached before the round starts
                pid = d.pid  # type: ignore[attr-defined]
                own0, cpu0, t0 = own_cpu(pid), group_cpu(groups[d.name]), time.perf_counter()
                run()
                wall = time.perf_counter() - t0
                cpu, own = group_cpu(groups[d.name]) - cpu0, own_cpu(pid) - own0
                if spy is not None:
                    spy.send_signal(signal.SIGINT)
                    spy.wait()
                rounds[d.name].append((wall, cpu, own))
                print(f"{args.operation} {d.name} round {i + 1}: wall {wall:.3f} s, "
                      f"CPU {cpu:.3f} s (daemon process {own:.3f})", flush=True)  # fmt: skip
                bench.quiesce(d, 0)
        for name, xs in rounds.items():
            if xs:
                wall, cpu, own = (statistics.median(x[k] for x in xs) for k in range(3))
                print(f"{args.operation} {name}: medians wall {wall:.3f} s, CPU {cpu:.3f} s, "
                      f"daemon process {own:.3f} s over {len(xs)} rounds")  # fmt: skip
    finally:
        for d in daemons:
            d.stop()
        reg.stop()
        for group in groups.values():
            for _ in range(50):  # the daemons' last processes leave it as they end
                try:
                    group.rmdir()
                    break
                except OSError:
                    time.sleep(0.1)
        shutil.rmtree(work, ignore_errors=True)  # the stopped daemons' roots, on /dev/shm
    return 0


if __name__ == "__main__":
    sys.exit(main())
