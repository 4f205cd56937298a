"""`liner check`: is this host ready for linerd, and is linerd answering? One row per check."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from liner.client import Client, LinerClientError


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


def socket_check(address: str, namespace: str) -> Check:
    try:
        with Client(address, namespace, timeout=5) as client:
            version = client.version()
            uuid = client.server().uuid
    except LinerClientError as e:
        return Check("socket", False, str(e))
    return Check("socket", True, f"{address}: linerd {version.version} (uuid {uuid})")


def store_check(root: Path) -> Check:
    blobs = root / "content" / "blobs" / "sha256"
    if not blobs.is_dir():
        return Check("store", False, f"{blobs} does not exist")
    count = sum(1 for _ in os.scandir(blobs))
    return Check("store", True, f"{root}: {count} blobs")


def database_check(root: Path) -> Check:
    path = root / "meta.db"
    if not path.exists():
        return Check("database", False, f"{path} does not exist")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            result = conn.execute("PRAGMA quick_check").fetchone()[0]
            version = conn.execute("SELECT max(version) FROM schema_version").fetchone()[0]
            mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error as e:
        return Check("database", False, f"{path}: {e}")
    return Check("database", result == "ok", f"{path}: {result}, schema {version}, {mode}")


def overlay_check() -> Check:
    with tempfile.TemporaryDirectory(prefix="liner-check-") as tmp:
        base = Path(tmp)
        for name in ("lower", "upper", "work", "merged"):
            (base / name).mkdir()
        options = f"lowerdir={base / 'lower'},upperdir={base / 'upper'},workdir={base / 'work'}"
        result = subprocess.run(
            ["mount", "-t", "overlay", "overlay", "-o", options, str(base / "merged")],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            return Check("overlay", False, result.stderr.strip() or "mount failed")
        subprocess.run(["umount", str(base / "merged")], check=False)
    return Check("overlay", True, "overlay mounts work")


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


def run_checks(address: str, namespace: str, root: Path) -> list[Check]:
    return [
        socket_check(address, namespace),
        store_check(root),
        database_check(root),
        _version("runc", "--version"),
        _version("crun", "--version"),
        _version("conmon", "--version"),
        overlay_check(),
        cgroup_check(),
    ]
