"""Diff/Apply through the API onto both snapshotters: diff IDs, trees, hostile layers."""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from support import Linerd, mounted, ns

from liner_api.containerd.services.content.v1 import content_pb2, content_pb2_grpc
from liner_api.containerd.services.diff.v1 import diff_pb2, diff_pb2_grpc
from liner_api.containerd.services.leases.v1 import leases_pb2, leases_pb2_grpc
from liner_api.containerd.services.snapshots.v1 import snapshots_pb2 as spb
from liner_api.containerd.services.snapshots.v1 import snapshots_pb2_grpc
from liner_api.containerd.types import descriptor_pb2

pytestmark = pytest.mark.integration

GZIP_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def layer(entries: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data else None)
    return buf.getvalue()


def file(name: str, data: bytes = b"", mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), mode
    return info, data


def special(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o777
    return info, b""


class Env:
    def __init__(self, channel: grpc.Channel, namespace: str) -> None:
        leases_pb2_grpc.LeasesStub(channel).Create(
            leases_pb2.CreateRequest(id="t"), metadata=ns(namespace)
        )
        self.md = ns(namespace, "t")
        self.content = content_pb2_grpc.ContentStub(channel)
        self.snapshots = snapshots_pb2_grpc.SnapshotsStub(channel)
        self.diff = diff_pb2_grpc.DiffStub(channel)

    def blob(self, data: bytes) -> descriptor_pb2.Descriptor:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        requests = [
            content_pb2.WriteContentRequest(action=0, ref=digest, total=len(data)),
            content_pb2.WriteContentRequest(action=2, total=len(data), expected=digest, data=data),
        ]
        try:
            list(self.content.Write(iter(requests), metadata=self.md))
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.ALREADY_EXISTS:
                raise
        return descriptor_pb2.Descriptor(media_type=GZIP_LAYER, digest=digest, size=len(data))

    def apply(
        self, snapshotter: str, key: str, parent: str, tar: bytes, media_type: str = GZIP_LAYER
    ) -> tuple[descriptor_pb2.Descriptor, list]:
        desc = self.blob(gzip.compress(tar))
        desc.media_type = media_type
        mounts = self.snapshots.Prepare(
            spb.PrepareSnapshotRequest(snapshotter=snapshotter, key=key, parent=parent),
            metadata=self.md,
        ).mounts
        applied = self.diff.Apply(
            diff_pb2.ApplyRequest(diff=desc, mounts=mounts), metadata=self.md
        ).applied
        return applied, list(mounts)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Linerd]:
    d = Linerd(tmp_path_factory.mktemp("diff"))
    d.start()
    yield d
    d.stop()


@pytest.fixture(params=["overlayfs", "native"])
def env(request: pytest.FixtureRequest, daemon: Linerd) -> Iterator[tuple[Env, str]]:
    with daemon.channel() as channel:
        namespace = "t-" + hashlib.sha256(request.node.name.encode()).hexdigest()[:16]
        yield Env(channel, namespace), request.param


def test_apply_two_layers(env: tuple[Env, str], tmp_path: Path) -> None:
    e, snapshotter = env
    first = layer(
        [
            special("etc", tarfile.DIRTYPE),
            file("etc/hello", b"hi\n"),
            file("etc/gone", b"x"),
            special("etc/link", tarfile.SYMTYPE, "hello"),
            special("hard", tarfile.LNKTYPE, "etc/hello"),
        ]
    )
    applied, _ = e.apply(snapshotter, "x1", "", first)
    assert applied.digest == "sha256:" + hashlib.sha256(first).hexdigest()
    assert applied.size == len(first)
    assert applied.media_type == "application/vnd.oci.image.layer.v1.tar"
    e.snapshots.Commit(
        spb.CommitSnapshotRequest(snapshotter=snapshotter, name="l1", key="x1"), metadata=e.md
    )
    second = layer([file("etc/.wh.gone"), file("new", b"new")])
    e.apply(snapshotter, "x2", "l1", second)
    e.snapshots.Commit(
        spb.CommitSnapshotRequest(snapshotter=snapshotter, name="l2", key="x2"), metadata=e.md
    )
    view = e.snapshots.View(
        spb.ViewSnapshotRequest(snapshotter=snapshotter, key="v", parent="l2"), metadata=e.md
    ).mounts
    with mounted(view, tmp_path / "v") as root:
        assert sorted(p.name for p in root.rglob("*")) == ["etc", "hard", "hello", "link", "new"]
        assert (root / "etc/link").readlink() == Path("hello")
        assert (root / "hard").stat().st_ino == (root / "etc/hello").stat().st_ino


@pytest.mark.parametrize(
    "entries",
    [
        [file("../escape", b"x")],
        [special("evil", tarfile.SYMTYPE, "/tmp"), file("evil/x", b"x")],
        [special("h", tarfile.LNKTYPE, "../../etc/passwd")],
    ],
    ids=["dotdot", "symlinked-parent", "hardlink-out"],
)
def test_hostile_layers_are_refused(env: tuple[Env, str], entries: list) -> None:
    e, snapshotter = env
    with pytest.raises(grpc.RpcError) as info:
        e.apply(snapshotter, "bad", "", layer(entries))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "layer entry" in info.value.details()


def test_bad_requests(env: tuple[Env, str]) -> None:
    e, snapshotter = env
    with pytest.raises(grpc.RpcError) as info:
        e.apply(snapshotter, "mt", "", layer([file("a")]), media_type="application/x-unknown")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    absent = descriptor_pb2.Descriptor(media_type=GZIP_LAYER, digest="sha256:" + "0" * 64, size=1)
    mounts = e.snapshots.Prepare(
        spb.PrepareSnapshotRequest(snapshotter=snapshotter, key="nf"), metadata=e.md
    ).mounts
    with pytest.raises(grpc.RpcError) as info:
        e.diff.Apply(diff_pb2.ApplyRequest(diff=absent, mounts=mounts), metadata=e.md)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_diff_of_a_changed_snapshot_round_trips(env: tuple[Env, str], tmp_path: Path) -> None:
    e, snapshotter = env
    base = layer([special("etc", tarfile.DIRTYPE), file("etc/a", b"a"), file("etc/b", b"b")])
    e.apply(snapshotter, "b1", "", base)
    e.snapshots.Commit(
        spb.CommitSnapshotRequest(snapshotter=snapshotter, name="base", key="b1"), metadata=e.md
    )
    work = e.snapshots.Prepare(
        spb.PrepareSnapshotRequest(snapshotter=snapshotter, key="work", parent="base"),
        metadata=e.md,
    ).mounts
    with mounted(work, tmp_path / "w") as root:
        (root / "etc/a").write_bytes(b"changed")
        (root / "etc/b").unlink()
        (root / "new").write_bytes(b"new")
    lower = e.snapshots.View(
        spb.ViewSnapshotRequest(snapshotter=snapshotter, key="lower", parent="base"),
        metadata=e.md,
    ).mounts
    made = e.diff.Diff(diff_pb2.DiffRequest(left=lower, right=work), metadata=e.md).diff
    assert made.media_type == GZIP_LAYER
    info = e.content.Info(content_pb2.InfoRequest(digest=made.digest), metadata=e.md).info
    assert info.size == made.size
    with tarfile.open(
        fileobj=io.BytesIO(
            b"".join(
                r.data
                for r in e.content.Read(
                    content_pb2.ReadContentRequest(digest=made.digest), metadata=e.md
                )
            )
        )
    ) as tar:
        names = set(tar.getnames())
    assert {"etc/a", "etc/.wh.b", "new"} <= names and "etc/b" not in names
    assert info.labels["containerd.io/uncompressed"].startswith("sha256:")
    # applying the diff onto the base reproduces the changed tree
    mounts = e.snapshots.Prepare(
        spb.PrepareSnapshotRequest(snapshotter=snapshotter, key="replay", parent="base"),
        metadata=e.md,
    ).mounts
    applied = e.diff.Apply(diff_pb2.ApplyRequest(diff=made, mounts=mounts), metadata=e.md).applied
    assert applied.digest == info.labels["containerd.io/uncompressed"]
    with mounted(mounts, tmp_path / "r") as root:
        assert (root / "etc/a").read_bytes() == b"changed"
        assert not (root / "etc/b").exists() and (root / "new").read_bytes() == b"new"
