"""Pulls of lying or hostile images: each fails with the right gRPC code and a readable
message, and leaves the store as it was.

"As it was": the namespace already holds a good image (busybox from the session registry);
after the failed pull no lease is left, and after a synchronous GC the content, snapshots,
images and ingests of the namespace are exactly those of before. The lies come from a tiny
in-test registry (`FakeRegistry`) since a real one verifies what it is given.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest
from imagebuild import (
    OCI_MANIFEST,
    Blob,
    Entry,
    Layer,
    build_config,
    build_layer,
    build_manifest,
    dir_,
    file,
    layer_tar,
    sha256,
    symlink,
)
from registry import Registry
from support import Linerd, ns

from liner_api.containerd.services.content.v1 import content_pb2, content_pb2_grpc
from liner_api.containerd.services.images.v1 import images_pb2, images_pb2_grpc
from liner_api.containerd.services.leases.v1 import leases_pb2, leases_pb2_grpc
from liner_api.containerd.services.snapshots.v1 import snapshots_pb2 as spb
from liner_api.containerd.services.snapshots.v1 import snapshots_pb2_grpc
from liner_api.liner.services.transfer.v1 import transfer_pb2, transfer_pb2_grpc

pytestmark = pytest.mark.integration

_PATH = re.compile(r"^/v2/(?P<repo>.+)/(?P<kind>manifests|blobs)/(?P<ref>[^/]+)$")


# -- a registry that lies ----------------------------------------------------------------


@dataclass
class Repo:
    manifests: dict[str, tuple[str, bytes]] = field(default_factory=dict)  # ref -> (type, body)
    blobs: dict[str, bytes] = field(default_factory=dict)  # digest -> bytes served
    # Serve manifests without HEAD support and without Content-Length (read to EOF).
    streamed_manifests: bool = False

    def put_manifest(self, tag: str, media_type: str, body: bytes) -> str:
        digest = sha256(body)
        self.manifests[tag] = self.manifests[digest] = (media_type, body)
        return digest

    def put_blob(self, blob: Blob | Layer, served: bytes | None = None) -> None:
        b = blob.blob if isinstance(blob, Layer) else blob
        self.blobs[b.digest] = b.data if served is None else served


class FakeRegistry:
    """Distribution's read API over dicts, in a thread; serves whatever it is told to."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        registry = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, code: int, body: bytes, headers: dict[str, str]) -> None:
                self.send_response(code)
                for k, v in headers.items():
                    self.send_header(k, v)
                if "Content-Length" not in headers:
                    self.send_header("Connection", "close")
                    self.close_connection = True
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _not_found(self) -> None:
                body = json.dumps({"errors": [{"code": "NOT_FOUND", "message": "nope"}]})
                data = body.encode()
                self._send(404, data, {"Content-Length": str(len(data))})

            def do_HEAD(self) -> None:
                self.do_GET()

            def do_GET(self) -> None:
                if self.path == "/v2/":
                    self._send(200, b"{}", {"Content-Length": "2"})
                    return
                m = _PATH.match(self.path)
                repo = registry.repos.get(m["repo"]) if m else None
                if m is None or repo is None:
                    self._not_found()
                    return
                if m["kind"] == "manifests":
                    found = repo.manifests.get(m["ref"])
                    if found is None:
                        self._not_found()
                        return
                    media_type, body = found
                    headers = {"Content-Type": media_type, "Docker-Content-Digest": sha256(body)}
                    if repo.streamed_manifests:
                        if self.command == "HEAD":
                            self._send(405, b"", {"Content-Length": "0"})
                            return
                    else:
                        headers["Content-Length"] = str(len(body))
                    self._send(200, body, headers)
                    return
                data = repo.blobs.get(m["ref"])
                if data is None:
                    self._not_found()
                    return
                headers = {
                    "Content-Type": "application/octet-stream",
                    "Content-Length": str(len(data)),
                }
                self._send(200, data, headers)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self._httpd.server_address[1]}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeRegistry]:
    r = FakeRegistry()
    r.start()
    yield r
    r.stop()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Linerd]:
    d = Linerd(tmp_path_factory.mktemp("pull-hostile"))
    d.start()
    yield d
    d.stop()


# -- store snapshots ---------------------------------------------------------------------


def pull(daemon: Linerd, ref: str, namespace: str, snapshotter: str = "") -> list:
    with daemon.channel() as channel:
        stub = transfer_pb2_grpc.TransferStub(channel)
        request = transfer_pb2.PullRequest(reference=ref, plain_http=True, snapshotter=snapshotter)
        return list(stub.Pull(request, metadata=ns(namespace), timeout=60))


def store_state(daemon: Linerd, namespace: str) -> dict[str, Any]:
    md = ns(namespace)
    with daemon.channel() as channel:
        content = content_pb2_grpc.ContentStub(channel)
        snaps = snapshots_pb2_grpc.SnapshotsStub(channel)
        blobs = {
            i.digest: dict(i.labels)
            for resp in content.List(content_pb2.ListContentRequest(), metadata=md)
            for i in resp.info
        }
        ingests = [
            (s.ref, s.offset)
            for s in content.ListStatuses(content_pb2.ListStatusesRequest(), metadata=md).statuses
        ]
        snapshots = {
            sn: {
                (i.name, i.kind, i.parent)
                for resp in snaps.List(spb.ListSnapshotsRequest(snapshotter=sn), metadata=md)
                for i in resp.info
            }
            for sn in ("overlayfs", "native")
        }
        images = {
            i.name: i.target.digest
            for i in images_pb2_grpc.ImagesStub(channel)
            .List(images_pb2.ListImagesRequest(), metadata=md)
            .images
        }
        leases = [
            lease.id
            for lease in leases_pb2_grpc.LeasesStub(channel)
            .List(leases_pb2.ListRequest(), metadata=md)
            .leases
        ]
    return {
        "content": blobs,
        "ingests": ingests,
        "snapshots": snapshots,
        "images": images,
        "leases": leases,
    }


def sync_gc(daemon: Linerd, namespace: str) -> None:
    with daemon.channel() as channel:
        leases = leases_pb2_grpc.LeasesStub(channel)
        leases.Create(leases_pb2.CreateRequest(id="gc-trigger"), metadata=ns(namespace))
        leases.Delete(leases_pb2.DeleteRequest(id="gc-trigger", sync=True), metadata=ns(namespace))


@pytest.fixture
def namespace(request: pytest.FixtureRequest, daemon: Linerd, registry: Registry) -> str:
    """A namespace holding a good image (busybox, unpacked on both snapshotters)."""
    name = "h-" + hashlib.sha256(request.node.name.encode()).hexdigest()[:12]
    good = registry.ref("library/busybox:latest")
    pull(daemon, good, name, "overlayfs")
    pull(daemon, good, name, "native")
    return name


def assert_refused(
    daemon: Linerd,
    namespace: str,
    ref: str,
    code: grpc.StatusCode,
    message: str,
    snapshotter: str = "",
) -> grpc.RpcError:
    before = store_state(daemon, namespace)
    with pytest.raises(grpc.RpcError) as info:
        pull(daemon, ref, namespace, snapshotter)
    error = info.value
    assert error.code() == code, error.details()
    assert re.search(message, error.details()), error.details()
    assert "Traceback" not in error.details()
    assert store_state(daemon, namespace)["leases"] == []  # the pull's lease went with it
    sync_gc(daemon, namespace)
    assert store_state(daemon, namespace) == before
    return error


# -- images ------------------------------------------------------------------------------


@dataclass
class Image:
    manifest: Blob
    config: Blob
    layers: list[Layer]


def image(
    layers_entries: list[list[Entry]], *, diff_ids: list[str] | None = None, salt: str = ""
) -> Image:
    """A one-off image; `salt` keeps its blobs apart from every other test's."""
    layers = [build_layer(e) for e in layers_entries]
    config = build_config(
        diff_ids if diff_ids is not None else [layer.diff_id for layer in layers],
        labels={"salt": salt} if salt else None,
    )
    return Image(build_manifest(config, layers), config, layers)


def publish(fake: FakeRegistry, repo: str, img: Image, tag: str = "t") -> str:
    r = fake.repos.setdefault(repo, Repo())
    r.put_manifest(tag, OCI_MANIFEST, img.manifest.data)
    r.put_blob(img.config)
    for layer in img.layers:
        r.put_blob(layer)
    return f"{fake.host}/{repo}:{tag}"


def good_entries(salt: str) -> list[Entry]:
    return [dir_("etc"), file("etc/salt", salt)]


# -- lying registries --------------------------------------------------------------------


def test_blob_bytes_do_not_match_digest(daemon: Linerd, fake: FakeRegistry, namespace: str) -> None:
    # big enough to arrive in many chunks: all but the last are written before the digest
    # can be checked, so the ingest holds a wrong prefix when the lie shows
    img = image([[*good_entries("mismatch"), file("random", os.urandom(2 << 20))]])
    ref = publish(fake, "lie/mismatch", img)
    layer = img.layers[0].blob
    liar = bytearray(layer.data)
    liar[1000] ^= 0xFF  # same size, other bytes
    fake.repos["lie/mismatch"].put_blob(img.layers[0], bytes(liar))
    assert_refused(daemon, namespace, ref, grpc.StatusCode.DATA_LOSS, r"digest mismatch")

    # once the registry serves the right bytes, the pull goes through: nothing of the lie
    # was kept to resume from
    fake.repos["lie/mismatch"].put_blob(img.layers[0])
    final = pull(daemon, ref, namespace)[-1]
    assert final.done and final.target.digest == img.manifest.digest


def test_truncated_blob(daemon: Linerd, fake: FakeRegistry, namespace: str) -> None:
    img = image([good_entries("truncated")])
    ref = publish(fake, "lie/truncated", img)
    layer = img.layers[0]
    fake.repos["lie/truncated"].put_blob(layer, layer.blob.data[: layer.blob.size // 2])
    assert_refused(daemon, namespace, ref, grpc.StatusCode.DATA_LOSS, r"size mismatch")


def test_truncated_config(daemon: Linerd, fake: FakeRegistry, namespace: str) -> None:
    img = image([good_entries("truncated-config")])
    ref = publish(fake, "lie/truncated-config", img)
    fake.repos["lie/truncated-config"].put_blob(img.config, img.config.data[:-10])
    assert_refused(daemon, namespace, ref, grpc.StatusCode.DATA_LOSS, r"size mismatch")


def big_manifest(img: Image) -> bytes:
    doc = json.loads(img.manifest.data)
    doc["annotations"] = {"padding": "x" * (4 << 20)}
    return json.dumps(doc).encode()


def test_manifest_over_the_cap(daemon: Linerd, fake: FakeRegistry, namespace: str) -> None:
    img = image([good_entries("big")])
    publish(fake, "lie/big", img)
    fake.repos["lie/big"].put_manifest("t", OCI_MANIFEST, big_manifest(img))
    assert_refused(
        daemon, namespace, f"{fake.host}/lie/big:t", grpc.StatusCode.INVALID_ARGUMENT, r"limit"
    )


def test_manifest_over_the_cap_without_length(
    daemon: Linerd, fake: FakeRegistry, namespace: str
) -> None:
    # no HEAD, no Content-Length: the cap must hold while reading
    img = image([good_entries("big-streamed")])
    publish(fake, "lie/big-streamed", img)
    repo = fake.repos["lie/big-streamed"]
    repo.streamed_manifests = True
    repo.put_manifest("t", OCI_MANIFEST, big_manifest(img))
    assert_refused(
        daemon,
        namespace,
        f"{fake.host}/lie/big-streamed:t",
        grpc.StatusCode.INVALID_ARGUMENT,
        r"limit",
    )


def test_manifest_names_an_absent_blob(daemon: Linerd, fake: FakeRegistry, namespace: str) -> None:
    img = image([good_entries("absent"), [file("extra", "never uploaded")]])
    ref = publish(fake, "lie/absent", img)
    del fake.repos["lie/absent"].blobs[img.layers[1].digest]
    error = assert_refused(daemon, namespace, ref, grpc.StatusCode.NOT_FOUND, r"not found")
    assert img.layers[1].digest in error.details()


def test_malformed_manifest_json(daemon: Linerd, fake: FakeRegistry, namespace: str) -> None:
    repo = fake.repos.setdefault("lie/malformed", Repo())
    repo.put_manifest("t", OCI_MANIFEST, b'{"schemaVersion": 2, "config": {"digest": ')
    assert_refused(
        daemon,
        namespace,
        f"{fake.host}/lie/malformed:t",
        grpc.StatusCode.INVALID_ARGUMENT,
        r"(?i)json",
    )


def test_config_diff_ids_do_not_match(daemon: Linerd, fake: FakeRegistry, namespace: str) -> None:
    wrong = sha256(b"not this layer")
    img = image([good_entries("wrong-diff-id")], diff_ids=[wrong])
    ref = publish(fake, "lie/diff-id", img)
    error = assert_refused(
        daemon, namespace, ref, grpc.StatusCode.INVALID_ARGUMENT, r"image config says"
    )
    assert wrong in error.details() and img.layers[0].diff_id in error.details()


# -- hostile layers (on both snapshotters) -----------------------------------------------


def raw_layer(tar: bytes) -> Layer:
    return Layer(Blob(OCI_MANIFEST.replace("manifest.v1+json", "layer.v1.tar+gzip"),
                      gzip.compress(tar, mtime=0)), sha256(tar))  # fmt: skip


def hostile(case: str, host_dir: Path) -> tuple[list[Entry], str]:
    """Layer entries for `case`, and the message expected."""
    if case == "dotdot":
        return [file("../escape", "out")], r'layer entry "\.\./escape": path escapes the root'
    if case == "dotdot-nested":
        return [dir_("a"), file("a/../../escape", "out")], r"path escapes the root"
    if case == "abs-symlink-write":
        return [symlink("evil", str(host_dir)), file("evil/planted", "x")], r"symlink"
    if case == "hardlink-host-abs":
        canary = host_dir / "canary"
        return [Entry("h", "hardlink", target=str(canary))], r"hard link target"
    if case == "hardlink-host-dotdot":
        return [Entry("h", "hardlink", target="../../../../../../etc/passwd")], r"escapes"
    if case == "whiteout-dotdot":
        return [dir_("sub"), file("sub/.wh...", "")], r"whiteout"
    if case == "whiteout-dot":
        return [dir_("sub"), file("sub/.wh..", "")], r"whiteout"
    raise AssertionError(case)


HOSTILE = [
    "dotdot",
    "dotdot-nested",
    "abs-symlink-write",
    "hardlink-host-abs",
    "hardlink-host-dotdot",
    "whiteout-dotdot",
    "whiteout-dot",
]


@pytest.mark.parametrize("snapshotter", ["overlayfs", "native"])
@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_layer(
    daemon: Linerd,
    fake: FakeRegistry,
    namespace: str,
    case: str,
    snapshotter: str,
    tmp_path: Path,
) -> None:
    host_dir = tmp_path / "host"
    host_dir.mkdir()
    canary = host_dir / "canary"
    canary.write_text("host file\n")
    entries, message = hostile(case, host_dir)
    # a good first layer below, so the bad one lands on a parent chain
    first = build_layer(good_entries(f"{case}-{snapshotter}"))
    bad = raw_layer(layer_tar(entries))
    config = build_config([first.diff_id, bad.diff_id])
    img = Image(build_manifest(config, [first, bad]), config, [first, bad])
    ref = publish(fake, f"hostile/{case}-{snapshotter}", img)
    assert_refused(daemon, namespace, ref, grpc.StatusCode.INVALID_ARGUMENT, message, snapshotter)
    assert sorted(p.name for p in host_dir.iterdir()) == ["canary"]
    assert canary.stat().st_nlink == 1
    assert canary.read_text() == "host file\n"
