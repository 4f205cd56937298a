"""Kill linerd (SIGKILL, at a named point inside an operation), restart it, check the store,
then finish the interrupted operation. The points are linerd.faults hooks."""

from __future__ import annotations

import subprocess
from pathlib import Path

import grpc
import pytest
from registry import Registry
from support import Linerd, ns

from liner_api.containerd.services.images.v1 import images_pb2, images_pb2_grpc
from liner_api.containerd.services.leases.v1 import leases_pb2, leases_pb2_grpc
from liner_api.liner.services.transfer.v1 import transfer_pb2, transfer_pb2_grpc
from linerd.fsck import check_store

pytestmark = pytest.mark.integration

PULL_POINTS = [
    "content-write",
    "content-commit",
    "image-create",
    "snapshot-prepare",
    "snapshot-commit",
    "layer-apply",
]
RUN_POINTS = [
    "container-create",
    "task-create-mounted",
    "task-create-spawned",
    "task-start",
    "task-delete",
]


def pull(daemon: Linerd, ref: str) -> None:
    with daemon.channel() as channel:
        list(
            transfer_pb2_grpc.TransferStub(channel).Pull(
                transfer_pb2.PullRequest(reference=ref, plain_http=True), metadata=ns(), timeout=60
            )
        )


def ctr(daemon: Linerd, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ctr", "-a", daemon.address, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=check,
    )


def collect(daemon: Linerd) -> None:
    """A synchronous garbage collection (through a throwaway lease)."""
    with daemon.channel() as channel:
        leases = leases_pb2_grpc.LeasesStub(channel)
        leases.Create(leases_pb2.CreateRequest(id="gc-now"), metadata=ns())
        leases.Delete(leases_pb2.DeleteRequest(id="gc-now", sync=True), metadata=ns())


def crashed(daemon: Linerd) -> None:
    assert daemon.proc is not None
    assert daemon.proc.wait(30) == -9, "linerd did not die at the crash point"


def consistent(daemon: Linerd) -> None:
    collect(daemon)
    findings = [f for f in check_store(daemon.root, daemon.state)]
    assert findings == [], "\n".join(map(str, findings))


@pytest.mark.parametrize("point", PULL_POINTS)
def test_crash_during_pull(point: str, registry: Registry, tmp_path: Path) -> None:
    daemon = Linerd(tmp_path / "d")
    ref = registry.ref("library/busybox:latest")
    daemon.start(env={"LINERD_CRASH_AT": point})
    try:
        with pytest.raises(grpc.RpcError):
            pull(daemon, ref)
        crashed(daemon)
        daemon.start()
        consistent(daemon)
        pull(daemon, ref)  # the interrupted operation, to success
        with daemon.channel() as channel:
            images_pb2_grpc.ImagesStub(channel).Get(
                images_pb2.GetImageRequest(name=ref), metadata=ns()
            )
        consistent(daemon)
        ctr(daemon, "run", "--rm", ref, "after", "true")
    finally:
        daemon.stop()


@pytest.mark.parametrize("point", RUN_POINTS)
def test_crash_during_run(point: str, registry: Registry, tmp_path: Path) -> None:
    daemon = Linerd(tmp_path / "d")
    ref = registry.ref("library/busybox:latest")
    daemon.start(env={"LINERD_CRASH_AT": point})
    try:
        pull(daemon, ref)
        result = ctr(daemon, "run", "--rm", ref, "victim", "true", check=False)
        assert result.returncode != 0
        crashed(daemon)
        daemon.start()
        # Whatever the crash left is visible and removable, then the run succeeds.
        ctr(daemon, "tasks", "rm", "-f", "victim", check=False)
        ctr(daemon, "containers", "rm", "victim", check=False)
        # A crash before the container record leaves ctr's snapshot under ctr's lease.
        ctr(daemon, "snapshots", "rm", "victim", check=False)
        consistent(daemon)
        out = ctr(daemon, "run", "--rm", ref, "victim", "echo", "ok").stdout
        assert out.strip() == "ok"
        consistent(daemon)
    finally:
        daemon.stop()


def test_crash_during_gc_sweep(registry: Registry, tmp_path: Path) -> None:
    daemon = Linerd(tmp_path / "d")
    ref = registry.ref("library/busybox:latest")
    daemon.start(env={"LINERD_CRASH_AT": "gc-sweep"})
    try:
        with pytest.raises(grpc.RpcError):
            pull(daemon, ref)  # the pull's own lease deletion schedules the crashing GC
            with daemon.channel() as channel:
                images_pb2_grpc.ImagesStub(channel).Delete(
                    images_pb2.DeleteImageRequest(name=ref, sync=True), metadata=ns()
                )
        crashed(daemon)
        daemon.start()
        consistent(daemon)
        pull(daemon, ref)
        consistent(daemon)
    finally:
        daemon.stop()
