"""Two of runc's CLI steps done in-process: each `runc` exec costs ~10 ms of CPU on the task
path of a short-lived container. Only where runc 1.x's on-disk protocol is simple and the
outcome certain; every other case answers None/False and the caller runs runc as before.
Blocking (file system and cgroupfs calls): delete_stopped runs in a thread."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
from pathlib import Path
from typing import Any


def state_dir(cmd: list[str], id: str) -> Path | None:
    """runc's state directory of container `id` (`<--root>/<id>`); None for another runtime,
    whose protocol we do not know."""
    if os.path.basename(cmd[0]) != "runc" or "--root" not in cmd[1:-1]:
        return None
    return Path(cmd[cmd.index("--root") + 1]) / id


def exec_fifo(cmd: list[str], id: str) -> Path | None:
    """The fifo runc's init blocks on until `runc start` reads it."""
    d = state_dir(cmd, id)
    return None if d is None else d / "exec.fifo"


def _needs_runc(state: dict[str, Any]) -> bool:
    """Would `runc delete` of this stopped container do more than remove its cgroups and
    state directory?"""
    config = state.get("config") or {}
    own_pid_ns = any(
        n.get("type") == "NEWPID" and not n.get("path") for n in config.get("namespaces") or []
    )
    hooks = config.get("Hooks") or config.get("hooks") or {}
    cgroups = config.get("cgroups") or {}
    return (
        not own_pid_ns  # runc kills what is left in the cgroup first
        or bool(hooks.get("poststop"))  # runc runs them
        or bool(cgroups.get("Systemd") or cgroups.get("systemd"))  # a unit to stop
        or bool(state.get("intel_rdt_path"))
    )


def _remove_cgroup(path: str) -> bool:
    """rmdir the cgroup and any child cgroups (deepest first); False if one is in use."""
    if not path.startswith("/sys/fs/cgroup/"):
        return False
    try:
        for top, dirs, _ in os.walk(path, topdown=False):
            for d in dirs:
                os.rmdir(os.path.join(top, d))
        os.rmdir(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        if e.errno in (errno.EBUSY, errno.ENOTEMPTY, errno.EACCES, errno.EPERM):
            return False
        raise
    return True


def delete_stopped(cmd: list[str], id: str) -> bool:
    """What `runc delete <id>` does once the container's init has exited (and, with its own
    pid namespace, every process in it with it): remove the cgroups recorded in its
    state.json, then the state directory. False when this is not that simple case, or a
    cgroup is still in use: the caller then runs `runc delete`, which knows what to do."""
    d = state_dir(cmd, id)
    if d is None:
        return False
    try:
        state = json.loads((d / "state.json").read_bytes())
    except (OSError, ValueError):
        return False
    if not isinstance(state, dict) or _needs_runc(state):
        return False
    paths = state.get("cgroup_paths") or {}
    # One hierarchy may be listed under several names (cpu, cpuacct): each dir once.
    for path in sorted(set(paths.values())):
        if not _remove_cgroup(path):
            return False
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(d)
    return True
