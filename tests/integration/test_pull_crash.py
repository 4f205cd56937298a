"""SIGKILL linerd in the middle of a pull of a large layer, restart it, pull again.

The layer (~40 MiB of random bytes, so no compression hides its size) goes through a
throttling proxy in front of the session registry, so the kill reliably lands mid-transfer.
The second pull resumes the ingest where the dead daemon left it (a `Range` request from the
ingest's offset, seen by the proxy), completes, and once the dead pull's lease is gone a
synchronous GC leaves exactly the image: its blobs, its chain of committed snapshots, no
ingest.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from imagebuild import OCI_MANIFEST, build_config, build_layer, build_manifest, dir_, file
from registry import Registry, ThrottlingProxy
from support import Linerd, ns

from liner_api.containerd.services.content.v1 import content_pb2, content_pb2_grpc
from liner_api.containerd.services.images.v1 import images_pb2, images_pb2_grpc
from liner_api.containerd.services.leases.v1 import leases_pb2, leases_pb2_grpc
from liner_api.containerd.services.snapshots.v1 import snapshots_pb2 as spb
from liner_api.containerd.services.snapshots.v1 import snapshots_pb2_grpc
from liner_api.liner.services.transfer.v1 import transfer_pb2, transfer_pb2_grpc

pytestmark = pytest.mark.integration

BIG = 40 << 20


@pytest.fixture
def proxy(registry: Registry) -> Iterator[ThrottlingProxy]:
    p = ThrottlingProxy(registry.host)
    yield p
    p.stop()


@pytest.fixture
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Linerd]:
    d = Linerd(tmp_path_factory.mktemp("pull-crash"))
    d.start()
    yield d
    d.stop()


def state(daemon: Linerd, namespace: str, snapshotter: str) -> dict[str, Any]:
    md = ns(namespace)
    with daemon.channel() as channel:
        content = content_pb2_grpc.ContentStub(channel)
        snaps = snapshots_pb2_grpc.SnapshotsStub(channel)
        return {
            "content": {
                i.digest
                for r in content.List(content_pb2.ListContentRequest(), metadata=md)
                for i in r.info
            },
            "ingests": {
                s.ref: s.offset
                for s in content.ListStatuses(
                    content_pb2.ListStatusesRequest(), metadata=md
                ).statuses
            },
            "snapshots": {
                (i.name, i.parent, i.kind)
                for r in snaps.List(spb.ListSnapshotsRequest(snapshotter=snapshotter), metadata=md)
                for i in r.info
            },
            "images": {
                i.name: i.target.digest
                for i in images_pb2_grpc.ImagesStub(channel)
                .List(images_pb2.ListImagesRequest(), metadata=md)
                .images
            },
            "leases": [
                lease.id
                for lease in leases_pb2_grpc.LeasesStub(channel)
                .List(leases_pb2.ListRequest(), metadata=md)
                .leases
            ],
        }


def chain_ids(diff_ids: list[str]) -> list[str]:
    chain: list[str] = []
    for d in diff_ids:
        chain.append(
            d if not chain else "sha256:" + hashlib.sha256(f"{chain[-1]} {d}".encode()).hexdigest()
        )
    return chain


@pytest.mark.parametrize("snapshotter", ["overlayfs", "native"])
def test_sigkill_mid_pull_then_resume(
    daemon: Linerd, registry: Registry, proxy: ThrottlingProxy, snapshotter: str
) -> None:
    namespace = f"crash-{snapshotter}"
    small = build_layer([dir_("etc"), file("etc/crash-test", snapshotter)], "gzip")
    big = build_layer([dir_("data"), file("data/random", os.urandom(BIG))], "none")
    config = build_config([small.diff_id, big.diff_id], labels={"t": snapshotter})
    manifest = build_manifest(config, [small, big])
    repo = f"crash/{snapshotter}"
    registry.push_raw(
        repo, "big", manifest.data, OCI_MANIFEST, [config.data, small.blob.data, big.blob.data]
    )
    ref = f"{proxy.host}/{repo}:big"
    request = transfer_pb2.PullRequest(reference=ref, plain_http=True, snapshotter=snapshotter)

    # 1. pull slowly (~6 MiB/s) and SIGKILL the daemon once the big layer is under way
    proxy.delay = 0.01
    seen = 0
    with daemon.channel() as channel:
        stream = transfer_pb2_grpc.TransferStub(channel).Pull(
            request, metadata=ns(namespace), timeout=120
        )
        with pytest.raises(grpc.RpcError) as info:
            for update in stream:
                blob = next((b for b in update.blobs if b.descriptor.digest == big.digest), None)
                if blob is not None and blob.offset >= 4 << 20:
                    seen = blob.offset
                    daemon.kill()
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert 0 < seen < big.blob.size, "the kill did not land mid-transfer"

    # 2. restart: the partial ingest survived, at least as far as progress had reported
    daemon.start()
    before = state(daemon, namespace, snapshotter)
    ingest = f"layer-{big.digest}"
    assert ingest in before["ingests"], before["ingests"]
    resumed_at = before["ingests"][ingest]
    assert seen <= resumed_at < big.blob.size
    assert before["images"] == {}

    # 3. pull again (full speed): it resumes from the ingest's offset and completes
    proxy.delay = 0.0
    mark = len(proxy.served)
    with daemon.channel() as channel:
        updates = list(
            transfer_pb2_grpc.TransferStub(channel).Pull(
                request, metadata=ns(namespace), timeout=120
            )
        )
    final = updates[-1]
    assert final.done and final.target.digest == manifest.digest
    big_gets = [
        s for s in proxy.served[mark:] if s.path.endswith(big.digest) and s.status in (200, 206)
    ]
    assert [s.range for s in big_gets] == [f"bytes={resumed_at}-"], proxy.served[mark:]
    assert big_gets[0].status == 206
    assert big_gets[0].sent == big.blob.size - resumed_at  # only the missing bytes moved
    first = next(
        b for u in updates for b in u.blobs if b.descriptor.digest == big.digest and b.offset
    )
    assert first.offset >= resumed_at

    # 4. the dead pull's lease is all that holds extra things; without it and after a sync GC
    #    exactly the image remains
    after = state(daemon, namespace, snapshotter)
    stale = after["leases"]
    assert all(lease.startswith("pull-") for lease in stale), stale
    assert after["ingests"] == {}
    with daemon.channel() as channel:
        leases = leases_pb2_grpc.LeasesStub(channel)
        for lease in stale:
            leases.Delete(leases_pb2.DeleteRequest(id=lease), metadata=ns(namespace))
        leases.Create(leases_pb2.CreateRequest(id="gc-trigger"), metadata=ns(namespace))
        leases.Delete(leases_pb2.DeleteRequest(id="gc-trigger", sync=True), metadata=ns(namespace))
    chain = chain_ids([small.diff_id, big.diff_id])
    assert state(daemon, namespace, snapshotter) == {
        "content": {manifest.digest, config.digest, small.digest, big.digest},
        "ingests": {},
        "snapshots": {
            (chain[0], "", spb.Kind.COMMITTED),
            (chain[1], chain[0], spb.Kind.COMMITTED),
        },
        "images": {ref: manifest.digest},
        "leases": [],
    }
    with daemon.channel() as channel:
        info_ = (
            content_pb2_grpc.ContentStub(channel)
            .Info(content_pb2.InfoRequest(digest=config.digest), metadata=ns(namespace))
            .info
        )
    assert info_.labels[f"containerd.io/gc.ref.snapshot.{snapshotter}"] == chain[-1]
