"""Unpacking overlaps downloading: a layer starts unpacking while its bytes still arrive."""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from imagebuild import OCI_MANIFEST, build_config, build_layer, build_manifest, dir_, file
from registry import Registry, ThrottlingProxy
from support import Linerd, ns

from liner_api.liner.services.transfer.v1 import transfer_pb2, transfer_pb2_grpc

pytestmark = pytest.mark.integration


@pytest.fixture
def proxy(registry: Registry) -> Iterator[ThrottlingProxy]:
    p = ThrottlingProxy(registry.host, delay=0.005)
    yield p
    p.stop()


@pytest.mark.parametrize("snapshotter", ["overlayfs", "native"])
def test_layer_unpacks_while_it_downloads(
    linerd: Linerd, registry: Registry, proxy: ThrottlingProxy, snapshotter: str
) -> None:
    # Many files in one plain-tar layer, served slowly: the applier reads them as they come.
    # ~2 s of download: with 0.5 s, a loaded machine could start the unpack worker after it.
    proxy.delay = 0.02
    entries = [dir_("data")] + [file(f"data/f{i:04}", os.urandom(16 << 10)) for i in range(400)]
    layer = build_layer(entries, "none")
    config = build_config([layer.diff_id])
    manifest = build_manifest(config, [layer])
    repo = f"overlap/{snapshotter}"
    registry.push_raw(repo, "v1", manifest.data, OCI_MANIFEST, [config.data, layer.blob.data])
    request = transfer_pb2.PullRequest(
        reference=f"{proxy.host}/{repo}:v1", plain_http=True, snapshotter=snapshotter
    )
    with linerd.channel() as channel:
        updates = list(
            transfer_pb2_grpc.TransferStub(channel).Pull(
                request, metadata=ns(f"overlap-{snapshotter}"), timeout=120
            )
        )
    assert updates[-1].done
    during = [
        b.offset
        for u in updates
        for b in u.blobs
        if b.descriptor.digest == layer.digest and b.state == "unpacking"
    ]
    assert any(offset < layer.blob.size for offset in during), (
        "the layer was never seen unpacking before its download ended"
    )
    final = next(b for b in updates[-1].blobs if b.descriptor.digest == layer.digest)
    assert final.state == "unpacked" and final.offset == layer.blob.size


def test_many_pulls_reading_live_blobs_do_not_starve_the_writers(
    linerd: Linerd, registry: Registry, proxy: ThrottlingProxy
) -> None:
    # More pulls than the default executor has threads (6 here), each unpacking a layer as
    # it downloads: the unpackers wait for bytes that the downloads write through threads.
    n = 10
    refs = []
    for i in range(n):
        layer = build_layer([file(f"f{i}", os.urandom(1 << 20))], "none")
        config = build_config([layer.diff_id])
        manifest = build_manifest(config, [layer])
        repo = f"starve/i{i}"
        registry.push_raw(repo, "v1", manifest.data, OCI_MANIFEST, [config.data, layer.blob.data])
        refs.append(f"{proxy.host}/{repo}:v1")

    def pull(ref: str) -> bool:
        request = transfer_pb2.PullRequest(reference=ref, plain_http=True)
        with linerd.channel() as channel:
            stub = transfer_pb2_grpc.TransferStub(channel)
            return list(stub.Pull(request, metadata=ns("starve"), timeout=90))[-1].done

    with ThreadPoolExecutor(n) as pool:
        assert all(pool.map(pull, refs))
