"""Push end to end: Transfer/Push from linerd to Debian's docker-registry on 127.0.0.1.

Everything pushed is read back with skopeo (an independent client): the manifest digest the
registry serves must be the image's, and `skopeo copy` must find the same blobs. Where the test
needs to see the protocol (HEAD skips, mounts, PATCH chunks) linerd talks to a `RecordingProxy`
in front of the registry, which logs every request and can inject failures.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import secrets
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest
from imagebuild import OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, BusyboxLayout, build_config
from registry import SKOPEO, Registry
from support import Linerd, ns

from liner_api.containerd.services.content.v1 import content_pb2, content_pb2_grpc
from liner_api.containerd.services.images.v1 import images_pb2, images_pb2_grpc
from liner_api.containerd.services.leases.v1 import leases_pb2, leases_pb2_grpc
from liner_api.containerd.types import descriptor_pb2, platform_pb2
from liner_api.liner.services.transfer.v1 import transfer_pb2, transfer_pb2_grpc

pytestmark = pytest.mark.integration

BUSYBOX = "library/busybox"


# -- a proxy that records (and can break) every request ----------------------------------------


@dataclass
class Seen:
    method: str
    path: str  # with the query
    status: int
    headers: dict[str, str]


@dataclass
class RecordingProxy:
    """Forwards every method to ``upstream`` keeping the Host header (so the registry's
    Locations point back here); ``fail(method, path)`` may return a status to answer instead."""

    upstream: str
    seen: list[Seen] = field(default_factory=list)
    fail: Callable[[str, str], int | None] | None = None

    def __post_init__(self) -> None:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
                injected = proxy.fail(self.command, self.path) if proxy.fail else None
                if injected is not None:
                    data = json.dumps(
                        {"errors": [{"code": "UNKNOWN", "message": "injected failure"}]}
                    ).encode()
                    proxy.seen.append(Seen(self.command, self.path, injected, headers))
                    self.send_response(injected)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                conn = http.client.HTTPConnection(proxy.upstream, timeout=60)
                try:
                    conn.putrequest(self.command, self.path, skip_host=True,
                                    skip_accept_encoding=True)  # fmt: skip
                    for k, v in headers.items():
                        if k.lower() != "transfer-encoding":
                            conn.putheader(k, v)
                    if "content-length" not in {k.lower() for k in headers} and body:
                        conn.putheader("Content-Length", str(len(body)))
                    conn.endheaders(body or None)
                    resp = conn.getresponse()
                    data = resp.read()
                    proxy.seen.append(Seen(self.command, self.path, resp.status, headers))
                    self.send_response(resp.status)
                    for k, v in resp.getheaders():
                        if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                            self.send_header(k, v)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                finally:
                    conn.close()

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self._httpd.server_address[1]}"

    def ref(self, name: str) -> str:
        return f"{self.host}/{name}"

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def requests(self, method: str, fragment: str = "") -> list[Seen]:
        return [s for s in self.seen if s.method == method and fragment in s.path]


@pytest.fixture
def proxy(registry: Registry) -> Iterator[RecordingProxy]:
    p = RecordingProxy(registry.host)
    yield p
    p.stop()


@pytest.fixture
def daemon(linerd: Linerd) -> Linerd:
    """A fresh linerd per test: pulls download (and label) every blob, so which blobs carry
    which ``distribution.source`` label, hence what is mounted, does not depend on test order."""
    return linerd


@pytest.fixture(scope="module")
def empty_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A registry that holds nothing yet (no repository to mount from)."""
    reg = Registry("open", workdir=tmp_path_factory.mktemp("registry-empty"))
    reg.start()
    yield reg
    reg.stop()


# -- helpers ---------------------------------------------------------------------------------


def pull(daemon: Linerd, ref: str, namespace: str, **fields: Any) -> transfer_pb2.PullProgress:
    with daemon.channel() as channel:
        stub = transfer_pb2_grpc.TransferStub(channel)
        request = transfer_pb2.PullRequest(reference=ref, plain_http=True, **fields)
        return list(stub.Pull(request, metadata=ns(namespace)))[-1]


def push(
    daemon: Linerd, ref: str, namespace: str, image: str = "", **fields: Any
) -> list[transfer_pb2.PushProgress]:
    with daemon.channel() as channel:
        stub = transfer_pb2_grpc.TransferStub(channel)
        request = transfer_pb2.PushRequest(reference=ref, image=image, plain_http=True, **fields)
        return list(stub.Push(request, metadata=ns(namespace), timeout=300))


def push_error(daemon: Linerd, ref: str, namespace: str, **fields: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        push(daemon, ref, namespace, **fields)
    return info.value


def creds(reg: Registry, password: str | None = None) -> transfer_pb2.Credentials:
    return transfer_pb2.Credentials(
        username=reg.username, secret=reg.password if password is None else password
    )


def skopeo(reg: Registry, *args: str) -> subprocess.CompletedProcess[bytes]:
    cmd = [SKOPEO, "--insecure-policy", *args]
    env = dict(os.environ, HOME=str(reg.workdir))
    proc = subprocess.run(cmd, capture_output=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    return proc


def registry_digest(reg: Registry, repo_ref: str) -> str:
    return reg.manifest_digest(repo_ref)


def read_back(reg: Registry, repo_ref: str, dest: Path) -> dict[str, Any]:
    """`skopeo copy docker://… oci:dest:t` (all platforms); returns {"root": digest, "blobs":
    set of blob digests in the layout, checked against their bytes}."""
    creds_args = [f"--src-creds={reg.creds}"] if reg.creds else []
    skopeo(reg, "copy", "--quiet", "--all", "--preserve-digests", "--src-tls-verify=false",
           *creds_args, f"docker://{reg.host}/{repo_ref}", f"oci:{dest}:t")  # fmt: skip
    index = json.loads((dest / "index.json").read_text())
    blobs = set()
    for path in (dest / "blobs" / "sha256").iterdir():
        digest = f"sha256:{path.name}"
        assert "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest() == digest
        blobs.add(digest)
    return {"root": index["manifests"][0]["digest"], "blobs": blobs}


def states(final: transfer_pb2.PushProgress) -> dict[str, str]:
    return {b.descriptor.digest: b.state for b in final.blobs}


def write_blob(
    channel: grpc.Channel, namespace: str, lease: str, data: bytes, labels: dict[str, str]
) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    ref = f"test-{secrets.token_hex(4)}"
    step = 1 << 20

    def requests() -> Iterator[content_pb2.WriteContentRequest]:
        yield content_pb2.WriteContentRequest(
            action=content_pb2.WriteAction.STAT, ref=ref, total=len(data), expected=digest
        )
        for offset in range(0, len(data), step):
            yield content_pb2.WriteContentRequest(
                action=content_pb2.WriteAction.WRITE,
                ref=ref,
                offset=offset,
                data=data[offset : offset + step],
            )
        yield content_pb2.WriteContentRequest(
            action=content_pb2.WriteAction.COMMIT,
            ref=ref,
            offset=len(data),
            total=len(data),
            expected=digest,
            labels=labels,
        )

    stub = content_pb2_grpc.ContentStub(channel)
    for _ in stub.Write(requests(), metadata=ns(namespace, lease)):
        pass
    return digest


def make_image(daemon: Linerd, namespace: str, name: str, layer_sizes: list[int]) -> str:
    """An image made in linerd's store directly (no source labels: nothing to mount from) with
    random "layers" of the given sizes; returns the manifest digest."""
    with daemon.channel() as channel:
        leases = leases_pb2_grpc.LeasesStub(channel)
        lease = leases.Create(leases_pb2.CreateRequest(), metadata=ns(namespace)).lease.id
        try:
            media = OCI_LAYER + "+gzip"
            layers = []
            for size in layer_sizes:
                data = os.urandom(size)
                layers.append(
                    {
                        "mediaType": media,
                        "size": size,
                        "digest": write_blob(channel, namespace, lease, data, {}),
                    }
                )
            diff_ids = ["sha256:" + secrets.token_hex(32) for _ in layers]  # never unpacked
            config = build_config(diff_ids, labels={"nonce": secrets.token_hex(8)})
            write_blob(channel, namespace, lease, config.data, {})
            manifest = json.dumps(
                {
                    "schemaVersion": 2,
                    "mediaType": OCI_MANIFEST,
                    "config": {
                        "mediaType": OCI_CONFIG,
                        "digest": config.digest,
                        "size": config.size,
                    },
                    "layers": layers,
                },
                indent=2,
            ).encode()
            labels = {"containerd.io/gc.ref.content.config": config.digest}
            labels.update(
                {
                    f"containerd.io/gc.ref.content.l.{i}": lay["digest"]
                    for i, lay in enumerate(layers)
                }
            )
            digest = write_blob(channel, namespace, lease, manifest, labels)
            images_pb2_grpc.ImagesStub(channel).Create(
                images_pb2.CreateImageRequest(
                    image=images_pb2.Image(
                        name=name,
                        target=descriptor_pb2.Descriptor(
                            media_type=OCI_MANIFEST, digest=digest, size=len(manifest)
                        ),
                    )
                ),
                metadata=ns(namespace),
            )
        finally:
            leases.Delete(leases_pb2.DeleteRequest(id=lease), metadata=ns(namespace))
    return digest


# -- round trips -----------------------------------------------------------------------------


def test_push_round_trip(
    daemon: Linerd, registry: Registry, busybox_layout: BusyboxLayout, tmp_path: Path
) -> None:
    source = registry.ref(f"{BUSYBOX}:latest")
    pull(daemon, source, "roundtrip")
    dest = registry.ref("pushed/busybox:1")
    updates = push(daemon, dest, "roundtrip", image=source)
    final = updates[-1]
    image = busybox_layout.latest
    assert final.done and final.name == dest
    assert final.target.digest == image.manifest.digest
    # byte for byte: the registry serves the very manifest, so the digest is the same
    assert registry_digest(registry, "pushed/busybox:1") == image.manifest.digest
    back = read_back(registry, "pushed/busybox:1", tmp_path / "back")
    assert back["root"] == image.manifest.digest
    assert back["blobs"] == {b.digest for b in image.blobs} | {image.manifest.digest}
    # pulled from library/busybox of this registry: the blobs were mounted, not uploaded
    got = states(final)
    for blob in image.blobs:
        assert got[blob.digest] in ("mounted", "exists"), got
    assert got[image.manifest.digest] == "done"
    for b in final.blobs:
        assert b.offset == b.descriptor.size


def test_push_by_local_name_default_and_digest_reference(
    daemon: Linerd, registry: Registry, busybox_layout: BusyboxLayout
) -> None:
    digest = busybox_layout.latest.manifest.digest
    source = registry.ref(f"{BUSYBOX}:latest")
    target = pull(daemon, source, "byname").target
    # no local name: the image named like the reference goes up
    dest = registry.ref("pushed/byname:1")
    with daemon.channel() as channel:
        images_pb2_grpc.ImagesStub(channel).Create(
            images_pb2.CreateImageRequest(image=images_pb2.Image(name=dest, target=target)),
            metadata=ns("byname"),
        )
    final = push(daemon, dest, "byname")[-1]
    assert final.target.digest == digest and final.name == dest
    assert registry_digest(registry, "pushed/byname:1") == digest
    # by digest: the digest must be the image's
    final = push(daemon, registry.ref(f"pushed/bydigest@{digest}"), "byname", image=source)[-1]
    assert final.target.digest == digest
    assert set(states(final).values()) <= {"mounted", "exists", "done"}
    assert registry_digest(registry, f"pushed/bydigest@{digest}") == digest
    wrong = "sha256:" + "1" * 64
    err = push_error(daemon, registry.ref(f"pushed/bydigest@{wrong}"), "byname", image=source)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()


def test_mount_then_second_push_only_heads(
    daemon: Linerd, registry: Registry, busybox_layout: BusyboxLayout, proxy: RecordingProxy
) -> None:
    source = registry.ref(f"{BUSYBOX}:latest")
    pull(daemon, source, "mount")
    image = busybox_layout.latest
    final = push(daemon, proxy.ref("mounted/busybox:1"), "mount", image=source)[-1]
    mounts = proxy.requests("POST", "mount=")
    assert len(mounts) == len(image.blobs), proxy.seen
    for m in mounts:
        assert m.status == 201 and "from=library%2Fbusybox" in m.path, m
    assert {states(final)[b.digest] for b in image.blobs} == {"mounted"}
    assert not proxy.requests("PATCH")
    assert [s.status for s in proxy.requests("PUT")] == [201]  # the manifest, under its tag
    assert registry_digest(registry, "mounted/busybox:1") == image.manifest.digest

    proxy.seen.clear()
    final = push(daemon, proxy.ref("mounted/busybox:1"), "mount", image=source)[-1]
    heads = proxy.requests("HEAD", "/blobs/")
    assert sorted(h.path.rsplit("/", 1)[-1] for h in heads) == sorted(b.digest for b in image.blobs)
    assert {h.status for h in heads} == {200}
    assert not proxy.requests("POST") and not proxy.requests("PATCH")
    assert len(proxy.requests("PUT", "/manifests/1")) == 1
    assert {states(final)[b.digest] for b in image.blobs} == {"exists"}


def test_mount_refused_falls_back_to_upload(
    daemon: Linerd,
    registry: Registry,
    empty_registry: Registry,
    busybox_layout: BusyboxLayout,
    tmp_path: Path,
) -> None:
    # The blobs' source label names library/busybox on 127.0.0.1, which the empty registry
    # (also 127.0.0.1) does not have: 202, and the upload goes on in that session.
    source = registry.ref(f"{BUSYBOX}:latest")
    pull(daemon, source, "fallback")
    proxy = RecordingProxy(empty_registry.host)
    try:
        final = push(daemon, proxy.ref("fresh/busybox:1"), "fallback", image=source)[-1]
    finally:
        proxy.stop()
    image = busybox_layout.latest
    mounts = proxy.requests("POST", "mount=")
    assert mounts and {m.status for m in mounts} == {202}
    assert len(proxy.requests("POST")) == len(mounts)  # no second session per blob
    puts = proxy.requests("PUT", "/blobs/uploads/")
    assert len(puts) == len(image.blobs)
    for put in puts:
        assert "_state=" in put.path and "digest=sha256" in put.path and put.status == 201
    assert {states(final)[b.digest] for b in image.blobs} == {"done"}
    back = read_back(empty_registry, "fresh/busybox:1", tmp_path / "back")
    assert back["root"] == image.manifest.digest
    assert back["blobs"] == {b.digest for b in image.blobs} | {image.manifest.digest}


def test_big_layer_goes_up_in_patch_chunks(
    daemon: Linerd, empty_registry: Registry, tmp_path: Path
) -> None:
    big, small = 20 << 20, 100_000
    digest = make_image(daemon, "big", "local/big:1", [big, small])
    proxy = RecordingProxy(empty_registry.host)
    try:
        final = push(daemon, proxy.ref("big/image:1"), "big", image="local/big:1")[-1]
    finally:
        proxy.stop()
    assert final.target.digest == digest
    patches = proxy.requests("PATCH")
    # 20 MiB in 8 MiB chunks: 8 + 8 + 4, ranges without a unit, in order, each accepted
    assert [p.headers["Content-Range"] for p in patches] == [
        f"0-{(8 << 20) - 1}",
        f"{8 << 20}-{(16 << 20) - 1}",
        f"{16 << 20}-{big - 1}",
    ]
    assert {p.status for p in patches} == {202}
    assert all(p.headers["Content-Type"] == "application/octet-stream" for p in patches)
    # each PATCH went to the Location the previous reply gave (its _state changes)
    assert len({p.path for p in patches}) == 3
    puts = proxy.requests("PUT", "/blobs/uploads/")
    assert len(puts) == 3  # the big one's closing PUT, the small layer, the config
    assert {p.status for p in puts} == {201}
    assert {b.state for b in final.blobs} == {"done"}
    assert registry_digest(empty_registry, "big/image:1") == digest
    back = read_back(empty_registry, "big/image:1", tmp_path / "back")
    assert back["root"] == digest
    manifest = json.loads((tmp_path / "back" / "blobs" / "sha256" / digest[7:]).read_bytes())
    assert back["blobs"] == {digest, manifest["config"]["digest"]} | {
        layer["digest"] for layer in manifest["layers"]
    }


def test_index_pushes_every_platform(
    daemon: Linerd, registry: Registry, busybox_layout: BusyboxLayout, tmp_path: Path
) -> None:
    source = registry.ref(f"{BUSYBOX}:multi")
    multi = busybox_layout.multi
    pull(daemon, source, "multi-all", all_platforms=True)
    final = push(daemon, registry.ref("pushed/multi:1"), "multi-all", image=source)[-1]
    assert final.target.digest == multi.index.digest
    got = states(final)
    for image in multi.images:
        assert got[image.manifest.digest] == "done"
    assert got[multi.index.digest] == "done"
    assert registry_digest(registry, "pushed/multi:1") == multi.index.digest
    back = read_back(registry, "pushed/multi:1", tmp_path / "back")
    assert back["root"] == multi.index.digest
    want = {multi.index.digest}
    for image in multi.images:
        want |= {image.manifest.digest} | {b.digest for b in image.blobs}
    assert back["blobs"] == want


def test_index_with_missing_platforms(
    daemon: Linerd, registry: Registry, busybox_layout: BusyboxLayout
) -> None:
    source = registry.ref(f"{BUSYBOX}:multi")
    multi = busybox_layout.multi
    pull(daemon, source, "multi-one")  # the host platform only
    # all platforms wanted (the default), one is not here: refused before anything is sent
    err = push_error(daemon, registry.ref("pushed/multi-missing:1"), "multi-one", image=source)
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, err.details()
    assert "not in the content store" in err.details()
    amd64 = [platform_pb2.Platform(os="linux", architecture="amd64")]
    # only amd64 into a repository that lacks arm64: the registry refuses the index
    err = push_error(
        daemon, registry.ref("pushed/multi-missing:1"), "multi-one", image=source, platforms=amd64
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    assert "MANIFEST_BLOB_UNKNOWN" in err.details()
    # ... but into one that has arm64 already, the index goes up
    skopeo(registry, "copy", "--quiet", "--all", "--src-tls-verify=false",
           "--dest-tls-verify=false", f"docker://{source}",
           f"docker://{registry.ref('pushed/multi-partial:0')}")  # fmt: skip
    final = push(
        daemon, registry.ref("pushed/multi-partial:1"), "multi-one", image=source, platforms=amd64
    )[-1]
    assert final.target.digest == multi.index.digest
    assert multi.images[1].manifest.digest not in states(final)
    assert registry_digest(registry, "pushed/multi-partial:1") == multi.index.digest


def test_v2s2_keeps_its_media_types(daemon: Linerd, registry: Registry) -> None:
    source = registry.ref(f"{BUSYBOX}:v2s2")
    pulled = pull(daemon, source, "v2s2")
    final = push(daemon, registry.ref("pushed/v2s2:1"), "v2s2", image=source)[-1]
    assert final.target.digest == pulled.target.digest
    assert final.target.media_type == "application/vnd.docker.distribution.manifest.v2+json"
    assert registry_digest(registry, "pushed/v2s2:1") == pulled.target.digest


# -- auth --------------------------------------------------------------------------------------


def test_push_with_basic_auth(
    daemon: Linerd, auth_registry: Registry, busybox_layout: BusyboxLayout
) -> None:
    source = auth_registry.ref(f"{BUSYBOX}:latest")
    pull(daemon, source, "basic", credentials=creds(auth_registry))
    dest = auth_registry.ref("pushed/basic:1")
    err = push_error(daemon, dest, "basic", image=source)
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED, err.details()
    err = push_error(daemon, dest, "basic", image=source, credentials=creds(auth_registry, "nope"))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED, err.details()
    assert "nope" not in err.details() and "nope" not in daemon.log()
    final = push(daemon, dest, "basic", image=source, credentials=creds(auth_registry))[-1]
    assert final.target.digest == busybox_layout.latest.manifest.digest
    assert registry_digest(auth_registry, "pushed/basic:1") == final.target.digest
    assert auth_registry.password not in daemon.log()


def test_push_with_token_auth(
    daemon: Linerd, token_registry: Registry, busybox_layout: BusyboxLayout
) -> None:
    server = token_registry.token_server
    assert server is not None
    source = token_registry.ref(f"{BUSYBOX}:latest")
    pull(daemon, source, "token", credentials=creds(token_registry))
    dest = token_registry.ref("pushed/token:1")
    err = push_error(daemon, dest, "token", image=source, credentials=creds(token_registry, "x"))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED, err.details()
    server.requests.clear()
    final = push(daemon, dest, "token", image=source, credentials=creds(token_registry))[-1]
    assert final.target.digest == busybox_layout.latest.manifest.digest
    assert registry_digest(token_registry, "pushed/token:1") == final.target.digest
    scopes = {s for r in server.requests for v in r["query"].get("scope", []) for s in v.split()}
    assert "repository:pushed/token:pull,push" in scopes
    # the mount from library/busybox asked for pull on the source repository too
    assert "repository:library/busybox:pull" in scopes
    assert all(r["authorization"] for r in server.requests if r["method"] == "GET")
    assert {states(final)[b.digest] for b in busybox_layout.latest.blobs} == {"mounted"}


# -- errors ------------------------------------------------------------------------------------


def test_unknown_image(daemon: Linerd, registry: Registry) -> None:
    err = push_error(daemon, registry.ref("pushed/nothing:1"), "unknown")
    assert err.code() == grpc.StatusCode.NOT_FOUND, err.details()
    err = push_error(daemon, registry.ref("pushed/nothing:1"), "unknown", image="no/such:image")
    assert err.code() == grpc.StatusCode.NOT_FOUND, err.details()


def test_registry_failing_put_is_a_clear_error(
    daemon: Linerd, registry: Registry, busybox_layout: BusyboxLayout, proxy: RecordingProxy
) -> None:
    source = registry.ref(f"{BUSYBOX}:latest")
    pull(daemon, source, "failing")
    proxy.fail = lambda method, path: 500 if method == "PUT" else None
    err = push_error(daemon, proxy.ref("broken/busybox:1"), "failing", image=source)
    assert err.code() == grpc.StatusCode.UNAVAILABLE, err.details()
    assert "HTTP 500" in err.details() and "injected failure" in err.details()
    assert "/manifests/1" in err.details()
    assert len(proxy.requests("PUT")) > 1  # retried before giving up


def test_upload_restarts_after_a_failed_chunk(
    daemon: Linerd, empty_registry: Registry, tmp_path: Path
) -> None:
    digest = make_image(daemon, "restart", "local/restart:1", [12 << 20])
    proxy = RecordingProxy(empty_registry.host)
    failed: list[str] = []

    def fail_second_patch_once(method: str, path: str) -> int | None:
        if method == "PATCH" and not failed and len(proxy.requests("PATCH")) == 1:
            failed.append(path)
            return 503
        return None

    proxy.fail = fail_second_patch_once
    try:
        final = push(daemon, proxy.ref("restart/image:1"), "restart", image="local/restart:1")[-1]
    finally:
        proxy.stop()
    assert failed and final.target.digest == digest
    # a new session (POST) and the blob from its first byte
    assert len(proxy.requests("POST", "/blobs/uploads/")) == 3  # config + layer twice
    assert [p.headers["Content-Range"].split("-")[0] for p in proxy.requests("PATCH")] == [
        "0",
        str(8 << 20),
        "0",
        str(8 << 20),
    ]
    assert registry_digest(empty_registry, "restart/image:1") == digest
