"""Pull end to end: Transfer/Pull against Debian's docker-registry on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from imagebuild import BUSYBOX_EXPECTED, BusyboxLayout
from registry import Registry
from support import Linerd, mounted, ns

from liner_api.containerd.services.content.v1 import content_pb2, content_pb2_grpc
from liner_api.containerd.services.images.v1 import images_pb2, images_pb2_grpc
from liner_api.containerd.services.leases.v1 import leases_pb2, leases_pb2_grpc
from liner_api.containerd.services.snapshots.v1 import snapshots_pb2 as spb
from liner_api.containerd.services.snapshots.v1 import snapshots_pb2_grpc
from liner_api.containerd.types import platform_pb2
from liner_api.liner.services.transfer.v1 import transfer_pb2, transfer_pb2_grpc

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Linerd]:
    d = Linerd(tmp_path_factory.mktemp("pull"))
    d.start()
    yield d
    d.stop()


def pull(
    daemon: Linerd, ref: str, namespace: str, **fields: object
) -> list[transfer_pb2.PullProgress]:
    with daemon.channel() as channel:
        stub = transfer_pb2_grpc.TransferStub(channel)
        request = transfer_pb2.PullRequest(reference=ref, plain_http=True, **fields)
        return list(stub.Pull(request, metadata=ns(namespace)))


def check_tree(daemon: Linerd, namespace: str, snapshotter: str, chain_id: str, tmp: Path) -> None:
    with daemon.channel() as channel:
        snaps = snapshots_pb2_grpc.SnapshotsStub(channel)
        lease = f"check-{tmp.name}"
        leases_pb2_grpc.LeasesStub(channel).Create(
            leases_pb2.CreateRequest(id=lease), metadata=ns(namespace)
        )
        mounts = snaps.View(
            spb.ViewSnapshotRequest(
                snapshotter=snapshotter, key=f"check-{tmp.name}", parent=chain_id
            ),
            metadata=ns(namespace, lease),
        ).mounts
        try:
            with mounted(mounts, tmp / "root") as root:
                for path, data in BUSYBOX_EXPECTED["present"].items():
                    assert (root / path).read_bytes() == data, path
                for path, target in BUSYBOX_EXPECTED["symlinks"].items():
                    assert (root / path).readlink() == Path(target), path
                for path in BUSYBOX_EXPECTED["absent"]:
                    assert not (root / path).exists(), path
                for a, b in BUSYBOX_EXPECTED["hardlinks"]:
                    assert (root / a).stat().st_ino == (root / b).stat().st_ino
                assert (root / "data/owned").stat().st_uid == 1000
        finally:
            snaps.Remove(
                spb.RemoveSnapshotRequest(snapshotter=snapshotter, key=f"check-{tmp.name}"),
                metadata=ns(namespace),
            )


@pytest.mark.parametrize("tag", ["latest", "zstd", "uncompressed", "v2s2"])
@pytest.mark.parametrize("snapshotter", ["overlayfs", "native"])
def test_pull_and_unpack(
    daemon: Linerd,
    registry: Registry,
    busybox_layout: BusyboxLayout,
    tag: str,
    snapshotter: str,
    tmp_path: Path,
) -> None:
    namespace = f"{tag}-{snapshotter}"
    ref = registry.ref(f"library/busybox:{tag}")
    updates = pull(daemon, ref, namespace, snapshotter=snapshotter)
    final = updates[-1]
    assert final.done and final.name == ref
    states = {b.descriptor.digest: b.state for b in final.blobs}
    image = busybox_layout.latest if tag in ("latest", "v2s2") else getattr(busybox_layout, tag)
    for layer in image.layers:
        assert states[layer.blob.digest] == "unpacked"
    with daemon.channel() as channel:
        got = (
            images_pb2_grpc.ImagesStub(channel)
            .Get(images_pb2.GetImageRequest(name=ref), metadata=ns(namespace))
            .image
        )
        assert got.target.digest == final.target.digest
        config = (
            content_pb2_grpc.ContentStub(channel)
            .Info(content_pb2.InfoRequest(digest=image.config.digest), metadata=ns(namespace))
            .info
        )
        top = config.labels[f"containerd.io/gc.ref.snapshot.{snapshotter}"]
    check_tree(daemon, namespace, snapshotter, top, tmp_path)

    # pulling again reuses everything
    again = pull(daemon, ref, namespace, snapshotter=snapshotter)[-1]
    assert {b.state for b in again.blobs} <= {"exists", "unpacked"}


def test_multi_platform_index(
    daemon: Linerd, registry: Registry, busybox_layout: BusyboxLayout
) -> None:
    ref = registry.ref("library/busybox:multi")
    final = pull(daemon, ref, "multi")[-1]
    assert final.target.digest == busybox_layout.multi.index.digest
    arm = pull(
        daemon,
        ref,
        "multi-arm",
        platforms=[platform_pb2.Platform(os="linux", architecture="arm64")],
    )[-1]
    fetched = {b.descriptor.digest for b in arm.blobs}
    arm_image = next(
        i for i in busybox_layout.multi.images if i.platform["architecture"] == "arm64"
    )
    assert arm_image.manifest.digest in fetched
    with pytest.raises(grpc.RpcError) as info:
        pull(
            daemon,
            ref,
            "multi-none",
            platforms=[platform_pb2.Platform(os="linux", architecture="s390x")],
        )
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_unknown_image(daemon: Linerd, registry: Registry) -> None:
    with pytest.raises(grpc.RpcError) as info:
        pull(daemon, registry.ref("library/nothing:here"), "missing")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_source_labels_list_every_repository(
    daemon: Linerd, registry: Registry, busybox_layout: BusyboxLayout
) -> None:
    registry.push_layout(busybox_layout.path, "mirror/busybox:latest", tag="latest")
    pull(daemon, registry.ref("library/busybox:latest"), "sources-a")
    pull(daemon, registry.ref("library/busybox:latest"), "sources-b")  # blobs adopted
    pull(daemon, registry.ref("mirror/busybox:latest"), "sources-b")
    key = "containerd.io/distribution.source.127.0.0.1"
    layer = busybox_layout.latest.layers[0].blob.digest
    with daemon.channel() as channel:
        content = content_pb2_grpc.ContentStub(channel)
        for namespace, expected in (
            ("sources-a", "library/busybox"),
            ("sources-b", "library/busybox,mirror/busybox"),
        ):
            info = content.Info(content_pb2.InfoRequest(digest=layer), metadata=ns(namespace))
            assert info.info.labels[key] == expected
            # The manifest's references (set as it is recorded, or on the adopted record).
            image = busybox_layout.latest
            got = content.Info(
                content_pb2.InfoRequest(digest=image.manifest.digest), metadata=ns(namespace)
            ).info.labels
            assert got["containerd.io/gc.ref.content.config"] == image.config.digest
            assert [got[f"containerd.io/gc.ref.content.l.{i}"] for i in range(3)] == [
                layer.blob.digest for layer in image.layers
            ]
            assert got[key] == expected
