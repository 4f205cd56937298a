"""`liner check`: is this host ready for linerd, and is linerd answering? One row per check.

What concerns the daemon's files is asked of the daemon (Introspection: its directories, the
snapshotters it could start), so a check through `-a OTHER.sock` checks that daemon. Reading
the store itself (records against files) is `linerd check-store`: it needs the daemon's code
and, to repair, the daemon stopped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from liner.client import Client, LinerClientError, PluginInfo
from liner.dirs import METADATA, daemon_dirs


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str


def _version(binary: str, *args: str) -> Check:
    path = shutil.which(binary) or (binary if os.path.isabs(binary) else None)
    name = os.path.basename(binary)
    if path is None or not os.access(path, os.X_OK):
        return Check(name, False, "not found")
    try:
        out = subprocess.run([path, *args], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired) as e:
        return Check(name, False, str(e))
    first = out.strip().splitlines()[0] if out.strip() else "no version output"
    return Check(name, True, f"{path}: {first}")


def _blobs(content: Path | None) -> Check:
    if content is None:
        return Check("store", False, "linerd does not report its content directory")
    blobs = content / "blobs" / "sha256"
    try:
        count = sum(1 for _ in os.scandir(blobs))
    except OSError as e:
        return Check("store", False, f"{blobs}: {e.strerror}")
    return Check("store", True, f"{content}: {count} blobs")


def _database(plugins: list[PluginInfo], root: Path | None, state: Path | None) -> Check:
    metadata = next((p for p in plugins if (p.type, p.id) == METADATA), None)
    if metadata is None or metadata.init_error:
        why = metadata.init_error if metadata else "no metadata plugin"
        return Check("database", False, why)
    if root is None or state is None:
        return Check("database", False, "linerd does not report its root and state")
    missing = [str(d) for d in (root, state) if not d.is_dir()]
    if missing:
        return Check("database", False, f"{', '.join(missing)}: not a directory here")
    return Check("database", True, f"root {root}, state {state} (deep check: linerd check-store)")


def _overlay(plugins: list[PluginInfo]) -> Check:
    # linerd probes an overlay mount under its root at start and serves the overlayfs
    # snapshotter only if it works.
    if any(p.type == "io.containerd.snapshotter.v1" and p.id == "overlayfs" for p in plugins):
        return Check("overlay", True, "linerd's overlayfs snapshotter is available")
    return Check("overlay", False, "overlay mounts fail under linerd's root: only native")


def cgroup_check() -> Check:
    root = Path("/sys/fs/cgroup")
    if (root / "cgroup.controllers").exists():
        return Check("cgroups", True, "v2 (unified)")
    unified = root / "unified" / "cgroup.controllers"
    if unified.exists():
        controllers = unified.read_text().strip()
        detail = "v1 with a hybrid v2 mount" + (
            f" holding {controllers}: crun needs the unshare wrapper" if controllers else ""
        )
        return Check("cgroups", True, detail)
    if (root / "memory").is_dir():
        return Check("cgroups", True, "v1 (legacy)")
    return Check("cgroups", False, "no cgroup hierarchy found")


def daemon_checks(address: str, namespace: str) -> list[Check]:
    """socket, store, database, overlay: what linerd at `address` says about itself."""
    try:
        with Client(address, namespace, timeout=5) as client:
            version = client.version()
            uuid = client.server().uuid
            plugins = client.plugins()
    except LinerClientError as e:
        unreachable = "needs linerd: " + str(e)
        return [
            Check("socket", False, str(e)),
            *(Check(name, False, unreachable) for name in ("store", "database", "overlay")),
        ]
    dirs = daemon_dirs(plugins)
    return [
        Check("socket", True, f"{address}: linerd {version.version} (uuid {uuid})"),
        _blobs(dirs.content),
        _database(plugins, dirs.root, dirs.state),
        _overlay(plugins),
    ]


def run_checks(address: str, namespace: str) -> list[Check]:
    socket, store, database, overlay = daemon_checks(address, namespace)
    return [
        socket,
        store,
        database,
        _version("runc", "--version"),
        _version("crun", "--version"),
        _version("conmon", "--version"),
        overlay,
        cgroup_check(),
    ]
