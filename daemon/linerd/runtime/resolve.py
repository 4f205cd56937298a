"""Which runtime binary runs a container: by the container's runtime name, as configured.

containerd's runc shim names (`io.containerd.runc.v2`, ...) select the default runtime; the
runc options' `BinaryName` (what `ctr run --runc-binary` sets) and a task's `runtime_path`
replace the executable. Built in: `runc`, and `crun` where installed, through an unshare
wrapper on hosts whose hybrid cgroup layout crun refuses (see reference/runtime-execution.md).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from linerd.errdefs import InvalidArgument, NotFound
from linerd.runtime.types import RuntimeConfig

SHIM_NAMES = frozenset(
    {
        "io.containerd.runc.v2",
        "io.containerd.runc.v1",
        "io.containerd.runtime.v1.linux",
    }
)
SYSTEMD_CGROUP_FLAG = "--systemd-cgroup"
_CRUN_WRAPPER = """#!/bin/sh
# Written by linerd: crun refuses cgroup v1 hosts with a hybrid v2 mount that holds
# controllers; in a private mount namespace without that mount it sees plain v1.
exec unshare --mount --propagation private -- /bin/sh -c \\
  'umount /sys/fs/cgroup/unified 2>/dev/null; exec {crun} "$@"' crun "$@"
"""


def hybrid_cgroups() -> bool:
    controllers = Path("/sys/fs/cgroup/unified/cgroup.controllers")
    try:
        return bool(controllers.read_text().strip())
    except OSError:
        return False


def builtin(state: Path) -> dict[str, RuntimeConfig]:
    found: dict[str, RuntimeConfig] = {}
    runc = shutil.which("runc") or "/usr/sbin/runc"
    found["runc"] = RuntimeConfig(runc, name="runc")
    crun = shutil.which("crun")
    if crun:
        if hybrid_cgroups():
            wrapper = state / "bin" / "crun"
            wrapper.parent.mkdir(parents=True, exist_ok=True)
            wrapper.write_text(_CRUN_WRAPPER.format(crun=crun))
            os.chmod(wrapper, 0o755)
            crun = str(wrapper)
        found["crun"] = RuntimeConfig(crun, name="crun")
    return found


def parse(table: Mapping[str, Any]) -> dict[str, RuntimeConfig]:
    """The config's `[runtimes.<name>]` tables: `path` (required) and `args` (a list)."""
    result = {}
    for name, entry in table.items():
        if not isinstance(entry, Mapping) or not isinstance(entry.get("path"), str):
            raise InvalidArgument(f"runtimes.{name}: want a table with a string 'path'")
        args = entry.get("args", [])
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            raise InvalidArgument(f"runtimes.{name}.args must be a list of strings")
        unknown = set(entry) - {"path", "args"}
        if unknown:
            raise InvalidArgument(f"runtimes.{name}: unknown keys {sorted(unknown)}")
        result[name] = RuntimeConfig(entry["path"], tuple(args), name=name)
    return result


class Runtimes:
    def __init__(self, runtimes: Mapping[str, RuntimeConfig], default: str) -> None:
        if default not in runtimes:
            raise InvalidArgument(f"default runtime {default!r} is not configured")
        self._runtimes = dict(runtimes)
        self.default = default

    def names(self) -> list[str]:
        return sorted(self._runtimes)

    def resolve(
        self,
        name: str,
        binary_name: str = "",
        runtime_path: str = "",
        *,
        systemd_cgroup: bool = False,
    ) -> RuntimeConfig:
        """The runtime for a container's runtime name and runc options (`binary_name`,
        `systemd_cgroup`: the runtime then gets `--systemd-cgroup`, as containerd's runc shim
        passes it, so `<slice>:<prefix>:<name>` cgroups paths are systemd units)."""
        if name in self._runtimes:
            chosen = self._runtimes[name]
        elif not name or name in SHIM_NAMES:
            chosen = self._runtimes[self.default]
        else:
            raise NotFound(f"runtime {name!r} is not configured (known: {', '.join(self.names())})")
        override = runtime_path or binary_name
        if override:
            path = override if os.path.isabs(override) else shutil.which(override)
            if path is None:
                raise NotFound(f"runtime binary {override!r} not found")
            # Its own state dir: one runtime's --root must not hold another's containers.
            chosen = RuntimeConfig(path, chosen.args, name=os.path.basename(path))
        if systemd_cgroup and SYSTEMD_CGROUP_FLAG not in chosen.args:
            # A global flag (before the command); the state dir stays the runtime's own.
            chosen = RuntimeConfig(
                chosen.path, (*chosen.args, SYSTEMD_CGROUP_FLAG), name=chosen.key
            )
        return chosen
