"""`liner check --store`: does what is on disk match the metadata, and is nothing leaked?

Read-only by default (safe beside a running linerd: SQLite in WAL mode lets it read), one
finding per inconsistency. `repair` removes only what is provably orphaned (files no record
names, mounts and directories of tasks that no longer exist) and refuses while a linerd holds
the root.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from linerd.content.local import LocalStore
from linerd.content.store import ContentStore
from linerd.gc.collector import Collector
from linerd.metadata.content import ContentRecords
from linerd.metadata.db import Database, sqlite_url
from linerd.metadata.models import content, snapshots
from linerd.snapshots.backends import NativeBackend, OverlayBackend
from linerd.snapshots.store import SnapshotsCollectable, SnapshotStore


@dataclass(frozen=True, slots=True)
class Finding:
    kind: str
    subject: str
    detail: str
    # Safe to remove: nothing records it, or it belongs to nothing that exists.
    repairable: bool = False

    def __str__(self) -> str:
        return f"{self.kind}: {self.subject}: {self.detail}"


class RootBusy(Exception):
    pass


def check_store(root: Path, state: Path, url: str = "", verify: bool = False) -> list[Finding]:
    if not (root / "meta.db").exists() and not url:
        return [Finding("no-store", str(root), "no meta.db: not a linerd root")]
    db = Database(url or sqlite_url(root))
    try:
        findings = _content(db, root, verify)
        findings += _snapshots(db, root)
        findings += _unreachable(db, root)
        findings += _tasks(state)
        return findings
    finally:
        db.close()


def _content(db: Database, root: Path, verify: bool) -> list[Finding]:
    blobs = root / "content" / "blobs" / "sha256"
    recorded = set(db.run_sync(lambda c: list(c.scalars(select(content.c.digest).distinct()))))
    on_disk = {"sha256:" + e.name for e in os.scandir(blobs)} if blobs.is_dir() else set()
    findings = [
        Finding("missing-blob", d, "recorded, but its file is gone")
        for d in sorted(recorded - on_disk)
    ]
    findings += [
        Finding("orphan-blob", d, "a file no namespace records", repairable=True)
        for d in sorted(on_disk - recorded)
    ]
    if verify:
        for digest in sorted(on_disk & recorded):
            h = hashlib.sha256()
            with open(blobs / digest.removeprefix("sha256:"), "rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
            if "sha256:" + h.hexdigest() != digest:
                findings.append(Finding("corrupt-blob", digest, "its bytes hash differently"))
    ingests = root / "content" / "ingest"
    if ingests.is_dir():
        for entry in os.scandir(ingests):
            if entry.name.endswith(".tmp") or not (Path(entry.path) / "meta.json").exists():
                findings.append(
                    Finding("broken-ingest", entry.path, "half-created ingest", repairable=True)
                )
    return findings


def _snapshots(db: Database, root: Path) -> list[Finding]:
    t = snapshots.c
    rows = db.run_sync(
        lambda c: [
            tuple(r)
            for r in c.execute(select(t.snapshotter, t.namespace, t.key, t.id, t.parent, t.kind))
        ]
    )
    findings = []
    keys = {(sn, ns, key): kind for sn, ns, key, _, _, kind in rows}
    ids: dict[str, set[str]] = {}
    for snapshotter, namespace, key, snapshot_id, parent, _ in rows:
        ids.setdefault(snapshotter, set()).add(str(snapshot_id))
        directory = root / "snapshots" / snapshotter / str(snapshot_id)
        if not directory.is_dir():
            findings.append(
                Finding(
                    "missing-snapshot-dir",
                    f"{snapshotter}/{namespace}/{key}",
                    f"{directory} is gone",
                )
            )
        if parent and keys.get((snapshotter, namespace, parent)) != "committed":
            findings.append(
                Finding(
                    "broken-chain",
                    f"{snapshotter}/{namespace}/{key}",
                    f"parent {parent!r} is missing or not committed",
                )
            )
    base = root / "snapshots"
    for snapshotter_dir in base.iterdir() if base.is_dir() else []:
        if snapshotter_dir.name in ("check", "prestage"):  # scratch space, not snapshots
            continue
        for entry in snapshotter_dir.iterdir():
            if entry.name not in ids.get(snapshotter_dir.name, set()):
                findings.append(
                    Finding(
                        "orphan-snapshot-dir",
                        str(entry),
                        "a directory no snapshot records",
                        repairable=True,
                    )
                )
    return findings


def _unreachable(db: Database, root: Path) -> list[Finding]:
    """What garbage collection would remove: after a collection there must be none."""
    snapshots = {
        name: SnapshotStore(db, backend, root / "snapshots" / name)
        for name, backend in (("overlayfs", OverlayBackend()), ("native", NativeBackend()))
        if (root / "snapshots" / name).is_dir()
    }
    collector = Collector(db, ContentStore(LocalStore(root / "content"), ContentRecords(db)))
    collector.register_kind("snapshots", SnapshotsCollectable(snapshots))
    return [
        Finding("unreferenced", f"{ns}/{kind}/{key}", "nothing keeps it: the next GC removes it")
        for ns, kind, key in db.run_sync(collector.unreachable)
    ]


def _tasks(state: Path) -> list[Finding]:
    findings = []
    tasks = state / "tasks"
    mounts = _mounts_under(tasks)
    for mountpoint in mounts:
        bundle = Path(mountpoint).parent
        if not (bundle / "meta.json").exists():
            findings.append(
                Finding(
                    "orphan-mount", mountpoint, "a rootfs mount without a task", repairable=True
                )
            )
    for bundle in tasks.glob("*/*") if tasks.is_dir() else []:
        if not (bundle / "meta.json").exists() and str(bundle / "rootfs") not in mounts:
            findings.append(
                Finding("orphan-bundle", str(bundle), "a bundle without a task", repairable=True)
            )
    for pid, bundle in _conmons():
        if bundle.is_relative_to(tasks) and not (bundle / "meta.json").exists():
            findings.append(
                Finding("orphan-monitor", f"conmon {pid}", f"watches {bundle}, which no task owns")
            )
    return findings


def _mounts_under(directory: Path) -> list[str]:
    prefix = str(directory) + "/"
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].replace("\\040", " ")
            if point.startswith(prefix):
                found.append(point)
    return found


def _conmons() -> list[tuple[int, Path]]:
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            args = Path(entry.path, "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if args and os.path.basename(args[0]) == b"conmon" and b"-b" in args:
            bundle = args[args.index(b"-b") + 1].decode(errors="replace")
            found.append((int(entry.name), Path(bundle)))
    return found


def repair(findings: list[Finding], root: Path) -> list[Finding]:
    """Remove what the findings mark repairable; refuses while a linerd holds the root."""
    lock = os.open(root / "linerd.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise RootBusy(f"a linerd is using {root}: stop it before repairing") from None
        repaired = []
        for finding in findings:
            if not finding.repairable:
                continue
            if finding.kind == "orphan-blob":
                path = (
                    root / "content" / "blobs" / "sha256" / finding.subject.removeprefix("sha256:")
                )
                path.unlink(missing_ok=True)
            elif finding.kind == "orphan-mount":
                subprocess.run(["umount", "-l", finding.subject], check=False)
            elif _mounts_under(Path(finding.subject)):
                continue  # never delete through a mount: it would reach into a snapshot
            else:
                shutil.rmtree(finding.subject, ignore_errors=True)
            repaired.append(finding)
        return repaired
    finally:
        os.close(lock)
