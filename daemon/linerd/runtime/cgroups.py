"""cgroup v1 metrics of a process, read from the hierarchies its /proc/<pid>/cgroup names."""

from __future__ import annotations

import contextlib
from pathlib import Path

from linerd.errdefs import NotFound
from linerd.mounts import unescape_mountinfo
from linerd.runtime.types import TaskMetrics


def v1_mounts() -> dict[str, Path]:
    """controller name (and "name=systemd") → mount point of its v1 hierarchy."""
    res: dict[str, Path] = {}
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        pre, _, post = line.partition(" - ")
        fields = post.split()
        if len(fields) < 3 or fields[0] != "cgroup":
            continue
        mnt = Path(unescape_mountinfo(pre.split()[4]))
        for opt in fields[2].split(","):
            if opt in ("rw", "ro") or opt.startswith(("relatime", "no", "clone_children")):
                continue
            res[opt] = mnt
    return res


def cgroup_paths(pid: int) -> dict[str, Path]:
    """controller → the process's cgroup directory in that controller's v1 hierarchy."""
    mounts = v1_mounts()
    try:
        text = Path(f"/proc/{pid}/cgroup").read_text()
    except (FileNotFoundError, ProcessLookupError) as e:
        raise NotFound(f"process {pid} not found") from e
    res: dict[str, Path] = {}
    for line in text.splitlines():
        _hid, ctrls, path = line.split(":", 2)
        for c in ctrls.split(","):
            if c and c in mounts:
                res[c] = mounts[c] / path.lstrip("/")
    return res


def _int(p: Path, default: int = 0) -> int:
    try:
        v = p.read_text().strip()
    except OSError:
        return default
    if v == "max":
        return 0
    try:
        return int(v)
    except ValueError:
        return default


def read_metrics(pid: int) -> TaskMetrics:
    paths = cgroup_paths(pid)
    m = TaskMetrics()
    if cpuacct := paths.get("cpuacct"):
        m.cpu_usage_ns = _int(cpuacct / "cpuacct.usage")
        m.cpu_user_ns = _int(cpuacct / "cpuacct.usage_user")
        m.cpu_kernel_ns = _int(cpuacct / "cpuacct.usage_sys")
        with contextlib.suppress(OSError, ValueError):
            m.per_cpu_ns = [int(x) for x in (cpuacct / "cpuacct.usage_percpu").read_text().split()]
    if mem := paths.get("memory"):
        m.memory_usage = _int(mem / "memory.usage_in_bytes")
        m.memory_max_usage = _int(mem / "memory.max_usage_in_bytes")
        m.memory_limit = _int(mem / "memory.limit_in_bytes")
        m.memory_failcnt = _int(mem / "memory.failcnt")
        with contextlib.suppress(OSError, ValueError):
            for line in (mem / "memory.stat").read_text().splitlines():
                k, _, v = line.partition(" ")
                m.memory_stat[k] = int(v)
    if pids := paths.get("pids"):
        m.pids_current = _int(pids / "pids.current")
        m.pids_limit = _int(pids / "pids.max")
    return m
