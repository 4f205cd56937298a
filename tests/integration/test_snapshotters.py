"""One conformance suite, run against every snapshotter through the real Snapshots API."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from support import Linerd, mounted, ns

from liner_api.containerd.services.leases.v1 import leases_pb2, leases_pb2_grpc
from liner_api.containerd.services.snapshots.v1 import snapshots_pb2 as pb
from liner_api.containerd.services.snapshots.v1 import snapshots_pb2_grpc

pytestmark = pytest.mark.integration

SNAPSHOTTERS = ["overlayfs", "native"]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Linerd]:
    d = Linerd(tmp_path_factory.mktemp("snapshotters"))
    d.start()
    yield d
    d.stop()


class Client:
    """The Snapshots stub bound to one snapshotter and one namespace, holding a lease so the
    garbage collector keeps what the tests make."""

    def __init__(self, channel: grpc.Channel, snapshotter: str, namespace: str) -> None:
        self.stub = snapshots_pb2_grpc.SnapshotsStub(channel)
        self.snapshotter = snapshotter
        try:
            leases_pb2_grpc.LeasesStub(channel).Create(
                leases_pb2.CreateRequest(id="tests"), metadata=ns(namespace)
            )
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.ALREADY_EXISTS:
                raise
        self.md = ns(namespace, "tests")

    def __getattr__(self, method: str):  # type: ignore[no-untyped-def]
        rpc = getattr(self.stub, method)
        request_type = {
            "Prepare": pb.PrepareSnapshotRequest,
            "View": pb.ViewSnapshotRequest,
            "Mounts": pb.MountsRequest,
            "Commit": pb.CommitSnapshotRequest,
            "Remove": pb.RemoveSnapshotRequest,
            "Stat": pb.StatSnapshotRequest,
            "Update": pb.UpdateSnapshotRequest,
            "List": pb.ListSnapshotsRequest,
            "Usage": pb.UsageRequest,
            "Cleanup": pb.CleanupRequest,
        }[method]

        def call(**fields):  # type: ignore[no-untyped-def]
            return rpc(request_type(snapshotter=self.snapshotter, **fields), metadata=self.md)

        return call

    def code(self, method: str, **fields: object) -> grpc.StatusCode:
        with pytest.raises(grpc.RpcError) as info:
            getattr(self, method)(**fields)
        return info.value.code()

    def names(self, *filters: str) -> list[str]:
        return sorted(i.name for r in self.List(filters=list(filters)) for i in r.info)


@pytest.fixture(params=SNAPSHOTTERS)
def snap(request: pytest.FixtureRequest, daemon: Linerd) -> Iterator[Client]:
    namespace = f"{request.param}-{request.node.name.split('[')[0].replace('_', '-')}"
    with daemon.channel() as channel:
        yield Client(channel, request.param, namespace[:70])


def write(mounts: object, tmp: Path, files: dict[str, bytes], delete: tuple[str, ...] = ()) -> None:
    with mounted(mounts, tmp / "mnt") as root:  # type: ignore[arg-type]
        for name, data in files.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(data)
        for name in delete:
            (root / name).unlink()


def tree(mounts: object, tmp: Path) -> dict[str, bytes]:
    with mounted(mounts, tmp / "view") as root:  # type: ignore[arg-type]
        return {
            str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
        }


def test_prepare_commit_chain(snap: Client, tmp_path: Path) -> None:
    mounts = snap.Prepare(key="base-active").mounts
    write(mounts, tmp_path, {"a.txt": b"A", "dir/b.txt": b"B"})
    snap.Commit(name="base", key="base-active", labels={"layer": "1"})
    info = snap.Stat(key="base").info
    assert info.kind == pb.COMMITTED and info.labels["layer"] == "1" and info.parent == ""
    assert snap.code("Stat", key="base-active") == grpc.StatusCode.NOT_FOUND

    child = snap.Prepare(key="child-active", parent="base").mounts
    write(child, tmp_path, {"c.txt": b"C", "a.txt": b"A2"}, delete=("dir/b.txt",))
    snap.Commit(name="child", key="child-active")
    assert snap.Stat(key="child").info.parent == "base"

    view = snap.View(key="look", parent="child").mounts
    assert tree(view, tmp_path) == {"a.txt": b"A2", "c.txt": b"C"}
    assert snap.Stat(key="look").info.kind == pb.VIEW
    # the base layer itself is unchanged
    assert tree(snap.View(key="look-base", parent="base").mounts, tmp_path) == {
        "a.txt": b"A",
        "dir/b.txt": b"B",
    }
    # a view is read-only
    with mounted(view, tmp_path / "ro") as root, pytest.raises(OSError):
        (root / "new").write_bytes(b"x")


def test_mount_shapes(snap: Client) -> None:
    (m,) = snap.Prepare(key="k1").mounts
    assert m.type == "bind" and "rbind" in m.options and "rw" in m.options
    snap.Commit(name="c1", key="k1")
    mounts = snap.Prepare(key="k2", parent="c1").mounts
    if snap.snapshotter == "overlayfs":
        (m,) = mounts
        assert m.type == "overlay"
        assert any(o.startswith("lowerdir=") for o in m.options)
        assert any(o.startswith("upperdir=") for o in m.options)
    else:
        assert [m.type for m in mounts] == ["bind"]
    assert list(snap.Mounts(key="k2").mounts) == list(mounts)


def test_errors(snap: Client) -> None:
    snap.Prepare(key="k")
    assert snap.code("Prepare", key="k") == grpc.StatusCode.ALREADY_EXISTS
    assert snap.code("Prepare", key="x", parent="absent") == grpc.StatusCode.NOT_FOUND
    assert snap.code("Prepare", key="y", parent="k") == grpc.StatusCode.INVALID_ARGUMENT
    assert snap.code("Prepare", key="") == grpc.StatusCode.INVALID_ARGUMENT
    assert snap.code("Commit", name="n", key="absent") == grpc.StatusCode.NOT_FOUND
    snap.Commit(name="n", key="k")
    assert snap.code("Mounts", key="n") == grpc.StatusCode.FAILED_PRECONDITION
    snap.Prepare(key="k2")
    assert snap.code("Commit", name="n", key="k2") == grpc.StatusCode.ALREADY_EXISTS
    snap.View(key="v", parent="n")
    assert snap.code("Commit", name="n2", key="v") == grpc.StatusCode.FAILED_PRECONDITION
    assert snap.code("Remove", key="n") == grpc.StatusCode.FAILED_PRECONDITION  # has a child
    assert snap.code("Remove", key="absent") == grpc.StatusCode.NOT_FOUND
    assert snap.code("Stat", key="absent") == grpc.StatusCode.NOT_FOUND
    snap.Remove(key="v")
    snap.Remove(key="n")
    assert snap.names() == ["k2"]


def test_keys_are_not_file_names(snap: Client, tmp_path: Path) -> None:
    key = "extract-123 sha256:../../etc/passwd/ with spaces"
    mounts = snap.Prepare(key=key).mounts
    write(mounts, tmp_path, {"f": b"x"})
    snap.Commit(name="sha256:" + "a" * 64, key=key)
    assert snap.Stat(key="sha256:" + "a" * 64).info.kind == pb.COMMITTED


def test_labels_update_and_list_filters(snap: Client) -> None:
    snap.Prepare(key="a", labels={"team": "x"})
    snap.Prepare(key="b")
    info = snap.Update(
        info=pb.Info(name="b", labels={"team": "y", "extra": "1"}),
        update_mask={"paths": ["labels.team"]},
    ).info
    assert dict(info.labels) == {"team": "y"}
    assert snap.names() == ["a", "b"]
    assert snap.names('labels."team"==y') == ["b"]
    assert snap.names("name==a") == ["a"]
    assert snap.names("kind==active") == ["a", "b"]
    assert (
        snap.code("Update", info=pb.Info(name="a"), update_mask={"paths": ["parent"]})
        == grpc.StatusCode.INVALID_ARGUMENT
    )


def test_usage(snap: Client, tmp_path: Path) -> None:
    mounts = snap.Prepare(key="u").mounts
    write(mounts, tmp_path, {"big": os.urandom(1 << 20), "small": b"s"})
    active = snap.Usage(key="u")
    assert active.size >= 1 << 20 and active.inodes >= 2
    snap.Commit(name="uc", key="u")
    committed = snap.Usage(key="uc")
    assert committed.size >= 1 << 20 and committed.inodes >= 2


def test_namespaces_are_isolated(snap: Client, daemon: Linerd) -> None:
    snap.Prepare(key="mine")
    with daemon.channel() as channel:
        other = Client(channel, snap.snapshotter, f"other-{snap.snapshotter}")
        assert other.code("Stat", key="mine") == grpc.StatusCode.NOT_FOUND
        assert other.names() == []
        other.Prepare(key="mine")  # the same key is free in another namespace


def test_persistence_and_cleanup(tmp_path: Path) -> None:
    daemon = Linerd(tmp_path / "d")
    daemon.start()
    try:
        for name in SNAPSHOTTERS:
            with daemon.channel() as channel:
                c = Client(channel, name, "persist")
                mounts = c.Prepare(key="p").mounts
                write(mounts, tmp_path, {"kept": b"yes"})
                c.Commit(name="pc", key="p")
        daemon.kill()
        for name in SNAPSHOTTERS:  # a directory a crash left behind
            (daemon.root / "snapshots" / name / "tmp-crashed").mkdir()
        daemon.start()
        for name in SNAPSHOTTERS:
            with daemon.channel() as channel:
                c = Client(channel, name, "persist")
                assert c.names() == ["pc"]
                assert tree(c.View(key="look", parent="pc").mounts, tmp_path) == {"kept": b"yes"}
            assert not (daemon.root / "snapshots" / name / "tmp-crashed").exists()
    finally:
        daemon.stop()


def test_gc_removes_unreferenced_snapshots(daemon: Linerd) -> None:
    with daemon.channel() as channel:
        stub = snapshots_pb2_grpc.SnapshotsStub(channel)
        leases = leases_pb2_grpc.LeasesStub(channel)
        leases.Create(leases_pb2.CreateRequest(id="short"), metadata=ns("gcsnap"))
        md = ns("gcsnap", "short")
        stub.Prepare(pb.PrepareSnapshotRequest(snapshotter="overlayfs", key="k"), metadata=md)
        stub.Commit(
            pb.CommitSnapshotRequest(snapshotter="overlayfs", name="c", key="k"), metadata=md
        )
        leases.Delete(leases_pb2.DeleteRequest(id="short", sync=True), metadata=ns("gcsnap"))
        listed = list(
            stub.List(pb.ListSnapshotsRequest(snapshotter="overlayfs"), metadata=ns("gcsnap"))
        )
        assert [i.name for r in listed for i in r.info] == []
    leftovers = subprocess.run(
        ["ls", str(daemon.root / "snapshots" / "overlayfs")], capture_output=True, text=True
    ).stdout.split()
    assert all(not name.startswith("tmp-") for name in leftovers)


def test_mounts_answer_for_the_snapshot_as_it_is_now(snap: Client) -> None:
    # Mounts are cached per key: whatever ends a snapshot must end its cached mounts.
    snap.Prepare(key="base-1")
    snap.Commit(name="p1", key="base-1")
    snap.Prepare(key="base-2")
    snap.Commit(name="p2", key="base-2")
    snap.Prepare(key="k", parent="p1")
    first = list(snap.Mounts(key="k").mounts)
    assert first == list(snap.Mounts(key="k").mounts)
    snap.Remove(key="k")
    assert snap.code("Mounts", key="k") == grpc.StatusCode.NOT_FOUND
    snap.Prepare(key="k", parent="p2")
    assert list(snap.Mounts(key="k").mounts) != first
    snap.Commit(name="k-done", key="k")
    assert snap.code("Mounts", key="k") == grpc.StatusCode.NOT_FOUND
    assert snap.code("Mounts", key="k-done") == grpc.StatusCode.FAILED_PRECONDITION


def test_mounts_of_a_collected_snapshot_are_gone(daemon: Linerd) -> None:
    with daemon.channel() as channel:
        stub = snapshots_pb2_grpc.SnapshotsStub(channel)
        leases = leases_pb2_grpc.LeasesStub(channel)
        leases.Create(leases_pb2.CreateRequest(id="brief"), metadata=ns("gcmounts"))
        md = ns("gcmounts", "brief")
        stub.Prepare(pb.PrepareSnapshotRequest(snapshotter="overlayfs", key="k"), metadata=md)
        stub.Mounts(pb.MountsRequest(snapshotter="overlayfs", key="k"), metadata=md)
        leases.Delete(leases_pb2.DeleteRequest(id="brief", sync=True), metadata=ns("gcmounts"))
        with pytest.raises(grpc.RpcError) as info:
            stub.Mounts(pb.MountsRequest(snapshotter="overlayfs", key="k"), metadata=md)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
