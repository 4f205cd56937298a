"""The store check: clean after normal use, precise about each kind of damage, careful repair."""

from __future__ import annotations

import hashlib
import subprocess

import grpc
import pytest
from support import REPO, Linerd, ns

from liner_api.containerd.services.content.v1 import content_pb2, content_pb2_grpc
from liner_api.containerd.services.leases.v1 import leases_pb2, leases_pb2_grpc
from liner_api.containerd.services.snapshots.v1 import snapshots_pb2 as spb
from liner_api.containerd.services.snapshots.v1 import snapshots_pb2_grpc
from linerd.fsck import RootBusy, check_store, repair

pytestmark = pytest.mark.integration


def write(channel: grpc.Channel, data: bytes, labels: dict[str, str]) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    requests = [
        content_pb2.WriteContentRequest(action=0, ref=digest, total=len(data)),
        content_pb2.WriteContentRequest(
            action=2, total=len(data), expected=digest, data=data, labels=labels
        ),
    ]
    list(content_pb2_grpc.ContentStub(channel).Write(iter(requests), metadata=ns()))
    return digest


def kinds(linerd: Linerd) -> set[tuple[str, str]]:
    return {(f.kind, f.subject) for f in check_store(linerd.root, linerd.state)}


def test_clean_store_has_no_findings(linerd: Linerd) -> None:
    with linerd.channel() as channel:
        write(channel, b"kept", {"containerd.io/gc.root": "1"})
        snaps = snapshots_pb2_grpc.SnapshotsStub(channel)
        snaps.Prepare(
            spb.PrepareSnapshotRequest(
                snapshotter="overlayfs", key="a", labels={"containerd.io/gc.root": "1"}
            ),
            metadata=ns(),
        )
        snaps.Commit(
            spb.CommitSnapshotRequest(snapshotter="overlayfs", name="c", key="a"), metadata=ns()
        )
    assert check_store(linerd.root, linerd.state) == []


def test_findings_and_repair(linerd: Linerd) -> None:
    with linerd.channel() as channel:
        kept = write(channel, b"kept", {"containerd.io/gc.root": "1"})
        gone = write(channel, b"file goes missing", {"containerd.io/gc.root": "1"})
        leases = leases_pb2_grpc.LeasesStub(channel)
        leases.Create(leases_pb2.CreateRequest(id="l"), metadata=ns())
        snapshots_pb2_grpc.SnapshotsStub(channel).Prepare(
            spb.PrepareSnapshotRequest(snapshotter="native", key="leased"), metadata=ns(lease="l")
        )
    blobs = linerd.root / "content/blobs/sha256"
    (blobs / gone.removeprefix("sha256:")).unlink()
    orphan = hashlib.sha256(b"orphan").hexdigest()
    (blobs / orphan).write_bytes(b"orphan")
    (linerd.root / "snapshots/overlayfs/999").mkdir()
    (linerd.state / "tasks/default/ghost").mkdir(parents=True)

    found = kinds(linerd)
    assert ("missing-blob", gone) in found
    assert ("orphan-blob", "sha256:" + orphan) in found
    assert ("orphan-snapshot-dir", str(linerd.root / "snapshots/overlayfs/999")) in found
    assert ("orphan-bundle", str(linerd.state / "tasks/default/ghost")) in found
    assert not any(k == "unreferenced" for k, _ in found)  # the lease holds the snapshot

    findings = check_store(linerd.root, linerd.state)
    with pytest.raises(RootBusy):
        repair(findings, linerd.root)
    linerd.stop()
    repaired = {f.kind for f in repair(findings, linerd.root)}
    assert repaired == {"orphan-blob", "orphan-snapshot-dir", "orphan-bundle"}
    after = kinds(linerd)
    assert after == {("missing-blob", gone)}  # a lost file is reported, never papered over
    assert (blobs / kept.removeprefix("sha256:")).exists()
    linerd.start()


def test_unreferenced_objects_are_reported(linerd: Linerd) -> None:
    with linerd.channel() as channel:
        digest = write(channel, b"nothing holds this", {})  # no lease, no root label
    assert ("unreferenced", f"default/content/{digest}") in kinds(linerd)


def test_linerd_check_store(linerd: Linerd) -> None:
    check_store = [
        str(REPO / ".venv/bin/linerd"),
        "--root",
        str(linerd.root),
        "--state",
        str(linerd.state),
        "check-store",
    ]
    clean = subprocess.run(check_store, capture_output=True, text=True)
    assert clean.returncode == 0 and clean.stdout == "", clean.stdout + clean.stderr
    (linerd.root / "snapshots/native/777").mkdir()
    dirty = subprocess.run(check_store, capture_output=True, text=True)
    assert dirty.returncode == 1
    assert dirty.stdout.splitlines() == [
        f"orphan-snapshot-dir: {linerd.root / 'snapshots/native/777'}: "
        "a directory no snapshot records"
    ]
    busy = subprocess.run([*check_store, "--repair"], capture_output=True, text=True)
    assert busy.returncode == 1 and "stop it before repairing" in busy.stderr
    linerd.stop()
    fixed = subprocess.run([*check_store, "--repair"], capture_output=True, text=True)
    assert fixed.returncode == 0 and fixed.stdout.startswith("repaired orphan-snapshot-dir")
    linerd.start()
