"""The real `ctr images push`, `ctr images export` and `ctr images import` against linerd.

ctr does the registry and tar work itself; linerd serves the content (Content/Info and Read,
Write for import), images and leases, and the unpack of an import (Snapshots + Diff/Apply).
What ctr pushes is read back with skopeo, which must see the very manifest digest.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from imagebuild import BusyboxLayout, build_busybox_layout
from registry import SKOPEO, Registry
from support import Linerd, ns

from liner_api.liner.services.transfer.v1 import transfer_pb2, transfer_pb2_grpc

pytestmark = [
    pytest.mark.compat,
    pytest.mark.skipif(shutil.which("ctr") is None, reason="ctr is not installed"),
    pytest.mark.skipif(shutil.which("docker-registry") is None, reason="no docker-registry"),
]

REPO = "library/busybox"


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> BusyboxLayout:
    return build_busybox_layout(tmp_path_factory.mktemp("ctr-push-layout") / "layout")


@pytest.fixture(scope="module")
def reg(layout: BusyboxLayout, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    r = Registry("open", workdir=tmp_path_factory.mktemp("ctr-push-registry"))
    r.start()
    try:
        r.push_layout(layout.path, f"{REPO}:latest", tag="latest")
        yield r
    finally:
        r.stop()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Linerd]:
    d = Linerd(tmp_path_factory.mktemp("ctr-push"))
    d.start()
    yield d
    d.stop()


def ctr(daemon: Linerd, *args: str, namespace: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["ctr", "--address", daemon.address, "--namespace", namespace, *args],
        capture_output=True,
        text=True,
        timeout=180,
        env={k: v for k, v in os.environ.items() if not k.startswith("CONTAINERD_")},
    )
    if result.returncode != 0:
        raise AssertionError(
            f"ctr {' '.join(args)} failed ({result.returncode}): {result.stderr}\n"
            f"linerd log tail:\n{daemon.log()[-3000:]}"
        )
    return result


def images(daemon: Linerd, namespace: str) -> dict[str, str]:
    """ctr images ls: name -> digest."""
    out = ctr(daemon, "images", "ls", namespace=namespace).stdout
    return {r.split()[0]: r.split()[2] for r in out.splitlines()[1:] if r.strip()}


def pull(daemon: Linerd, ref: str, namespace: str) -> str:
    with daemon.channel() as channel:
        stub = transfer_pb2_grpc.TransferStub(channel)
        request = transfer_pb2.PullRequest(reference=ref, plain_http=True)
        return list(stub.Pull(request, metadata=ns(namespace)))[-1].target.digest


def skopeo(reg: Registry, *args: str) -> bytes:
    proc = subprocess.run(
        [SKOPEO, "--insecure-policy", *args],
        capture_output=True,
        env=dict(os.environ, HOME=str(reg.workdir)),
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout


def test_ctr_push(daemon: Linerd, reg: Registry, layout: BusyboxLayout, tmp_path: Path) -> None:
    source = reg.ref(f"{REPO}:latest")
    assert pull(daemon, source, "push") == layout.latest.manifest.digest
    dest = reg.ref("ctr-pushed/busybox:1")
    ctr(daemon, "images", "push", "--plain-http", dest, source, namespace="push")
    raw = skopeo(reg, "inspect", "--raw", "--tls-verify=false", f"docker://{dest}")
    assert "sha256:" + hashlib.sha256(raw).hexdigest() == layout.latest.manifest.digest
    skopeo(reg, "copy", "--quiet", "--src-tls-verify=false", f"docker://{dest}",
           f"oci:{tmp_path / 'back'}:t")  # fmt: skip
    blobs = {f"sha256:{p.name}" for p in (tmp_path / "back" / "blobs" / "sha256").iterdir()}
    assert blobs == {b.digest for b in layout.latest.blobs} | {layout.latest.manifest.digest}


def test_ctr_export_then_import(
    daemon: Linerd, reg: Registry, layout: BusyboxLayout, tmp_path: Path
) -> None:
    source = reg.ref(f"{REPO}:latest")
    digest = pull(daemon, source, "export")
    out = tmp_path / "busybox.tar"
    ctr(daemon, "images", "export", str(out), source, namespace="export")
    with tarfile.open(out) as tar:
        names = set(tar.getnames())
        index = json.load(tar.extractfile("index.json"))  # type: ignore[arg-type]
        for blob in [*layout.latest.blobs, layout.latest.manifest]:
            member = f"blobs/sha256/{blob.digest.split(':', 1)[1]}"
            assert member in names
            data = tar.extractfile(member).read()  # type: ignore[union-attr]
            assert hashlib.sha256(data).hexdigest() == blob.digest.split(":", 1)[1]
    assert "oci-layout" in names and "manifest.json" in names
    (entry,) = index["manifests"]
    assert entry["digest"] == digest
    assert entry["annotations"]["io.containerd.image.name"] == source
    # an OCI archive skopeo reads: the same manifest
    raw = skopeo(reg, "inspect", "--raw", f"oci-archive:{out}")
    assert "sha256:" + hashlib.sha256(raw).hexdigest() == digest

    # import into a namespace that has nothing: the image, its content, its snapshots
    ctr(daemon, "images", "import", str(out), namespace="import")
    assert images(daemon, "import") == {source: digest}
    content = ctr(daemon, "content", "ls", namespace="import").stdout
    for blob in [*layout.latest.blobs, layout.latest.manifest]:
        assert blob.digest in content
    snapshots = ctr(daemon, "snapshots", "ls", namespace="import").stdout
    assert len([line for line in snapshots.splitlines()[1:] if "Committed" in line]) == 3

    # importing again is fine (blobs exist already: ctr accepts the ALREADY_EXISTS commits)
    ctr(daemon, "images", "import", str(out), namespace="import")
    assert images(daemon, "import") == {source: digest}
    # and the imported image pushes like a pulled one
    dest = reg.ref("ctr-imported/busybox:1")
    ctr(daemon, "images", "push", "--plain-http", dest, source, namespace="import")
    raw = skopeo(reg, "inspect", "--raw", "--tls-verify=false", f"docker://{dest}")
    assert "sha256:" + hashlib.sha256(raw).hexdigest() == digest


def test_liner_push_of_a_ctr_import(daemon: Linerd, reg: Registry, tmp_path: Path) -> None:
    """Transfer/Push of an image ctr imported (no distribution.source labels: uploads)."""
    source = reg.ref(f"{REPO}:latest")
    digest = pull(daemon, source, "reexport")
    out = tmp_path / "busybox.tar"
    ctr(daemon, "images", "export", str(out), source, namespace="reexport")
    ctr(daemon, "images", "import", str(out), namespace="reimport")
    dest = reg.ref("liner-pushed/imported:1")
    with daemon.channel() as channel:
        stub = transfer_pb2_grpc.TransferStub(channel)
        request = transfer_pb2.PushRequest(reference=dest, image=source, plain_http=True)
        final = list(stub.Push(request, metadata=ns("reimport")))[-1]
    assert final.done and final.target.digest == digest
    raw = skopeo(reg, "inspect", "--raw", "--tls-verify=false", f"docker://{dest}")
    assert "sha256:" + hashlib.sha256(raw).hexdigest() == digest
