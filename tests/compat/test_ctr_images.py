"""The real `ctr images` (pull, ls, tag, rm) against linerd, and ctr mixed with liner's own API.

ctr fetches from the registry itself and only stores blobs, unpacks (Snapshots + Diff/Apply)
and records images through the daemon: these tests prove linerd serves that flow, leaves the
snapshots containerd would (chain IDs, committed), answers the fast path of a second pull, and
collects everything once the last image is removed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from imagebuild import BusyboxLayout, build_busybox_layout
from registry import Registry
from support import Linerd, ns

from liner_api.containerd.services.content.v1 import content_pb2, content_pb2_grpc
from liner_api.containerd.services.images.v1 import images_pb2, images_pb2_grpc
from liner_api.containerd.services.leases.v1 import leases_pb2, leases_pb2_grpc
from liner_api.liner.services.transfer.v1 import transfer_pb2, transfer_pb2_grpc

pytestmark = [
    pytest.mark.compat,
    pytest.mark.skipif(shutil.which("ctr") is None, reason="ctr is not installed"),
    pytest.mark.skipif(shutil.which("docker-registry") is None, reason="no docker-registry"),
]

REPO = "library/busybox"


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> BusyboxLayout:
    return build_busybox_layout(tmp_path_factory.mktemp("ctr-images-layout") / "layout")


@pytest.fixture(scope="module")
def reg(layout: BusyboxLayout, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    r = Registry("open", workdir=tmp_path_factory.mktemp("ctr-images-registry"))
    r.start()
    try:
        for tag in ("latest", "zstd"):
            r.push_layout(layout.path, f"{REPO}:{tag}", tag=tag)
        r.push_layout(layout.path, f"{REPO}:v2s2", tag="latest", format="v2s2")
        yield r
    finally:
        r.stop()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Linerd]:
    d = Linerd(tmp_path_factory.mktemp("ctr-images"))
    d.start()
    yield d
    d.stop()


def ctr(
    daemon: Linerd, *args: str, namespace: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["ctr", "--address", daemon.address, "--namespace", namespace, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if not k.startswith("CONTAINERD_")},
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"ctr {' '.join(args)} failed ({result.returncode}): {result.stderr}\n"
            f"linerd log tail:\n{daemon.log()[-3000:]}"
        )
    return result


def rows(output: str) -> list[list[str]]:
    return [line.split() for line in output.splitlines()[1:] if line.strip()]


def chain_ids(diff_ids: list[str]) -> list[str]:
    """Computed here, independently of linerd: C1 = D1, Ci = sha256("C(i-1) Di")."""
    chain: list[str] = []
    for d in diff_ids:
        chain.append(
            d if not chain else "sha256:" + hashlib.sha256(f"{chain[-1]} {d}".encode()).hexdigest()
        )
    return chain


def expected_chain(layout: BusyboxLayout) -> list[str]:
    return chain_ids([layer.diff_id for layer in layout.latest.layers])


def snapshots(daemon: Linerd, namespace: str) -> dict[str, tuple[str, str]]:
    """ctr snapshots ls: key -> (parent, kind); a root snapshot has an empty parent column."""
    found: dict[str, tuple[str, str]] = {}
    for row in rows(ctr(daemon, "snapshots", "ls", namespace=namespace).stdout):
        if len(row) == 2:
            found[row[0]] = ("", row[1])
        else:
            found[row[0]] = (row[1], row[2])
    return found


def images(daemon: Linerd, namespace: str) -> dict[str, str]:
    """ctr images ls: name -> digest."""
    return {r[0]: r[2] for r in rows(ctr(daemon, "images", "ls", namespace=namespace).stdout)}


def content(daemon: Linerd, namespace: str) -> set[str]:
    return {r[0] for r in rows(ctr(daemon, "content", "ls", namespace=namespace).stdout)}


def rpcs_since(daemon: Linerd, mark: int, namespace: str) -> list[tuple[str, str]]:
    """("Service/Method", code) of the RPCs linerd logged for `namespace` after log offset
    `mark`."""
    calls = []
    for line in daemon.log()[mark:].splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("event") == "rpc" and record.get("namespace") == namespace:
            calls.append((record["method"].rsplit(".", 1)[-1], record["code"]))
    return calls


def manifest_digest(reg: Registry, layout: BusyboxLayout, tag: str) -> str:
    if tag == "v2s2":
        return reg.manifest_digest(f"{REPO}:v2s2")  # skopeo converted it: ask the registry
    return getattr(layout, tag).manifest.digest


@pytest.mark.parametrize("tag", ["latest", "zstd", "v2s2"])
def test_pull_unpacks_into_chain_snapshots(
    daemon: Linerd, reg: Registry, layout: BusyboxLayout, tag: str
) -> None:
    # ctr 1.6.20 handles +zstd layers itself (it only hands the descriptor to Diff/Apply),
    # so :zstd needs no skip.
    namespace = f"pull-{tag}"
    ref = reg.ref(f"{REPO}:{tag}")
    out = ctr(daemon, "images", "pull", "--plain-http", ref, namespace=namespace).stdout
    digest = manifest_digest(reg, layout, tag)
    assert f"unpacking linux/amd64 {digest}" in out

    assert images(daemon, namespace) == {ref: digest}
    chain = expected_chain(layout)
    snaps = snapshots(daemon, namespace)
    assert set(snaps) == set(chain)
    for i, chain_id in enumerate(chain):
        parent = chain[i - 1] if i else ""
        assert snaps[chain_id] == (parent, "Committed"), chain_id

    image = layout.zstd if tag == "zstd" else layout.latest
    stored = content(daemon, namespace)
    assert {digest, image.config.digest, *(layer.digest for layer in image.layers)} == stored


def test_second_pull_takes_the_fast_path(
    daemon: Linerd, reg: Registry, layout: BusyboxLayout
) -> None:
    namespace = "twice"
    ref = reg.ref(f"{REPO}:latest")
    ctr(daemon, "images", "pull", "--plain-http", ref, namespace=namespace)
    time.sleep(0.2)  # let the first pull's log lines land
    mark = len(daemon.log())
    out = ctr(daemon, "images", "pull", "--plain-http", ref, namespace=namespace).stdout
    calls = rpcs_since(daemon, mark, namespace)
    assert calls, "no RPC of the second pull in the daemon log"
    writes = [code for method, code in calls if method == "Content/Write"]
    # every Content/Write stopped at its first STAT: the blob was already there
    assert writes and set(writes) == {"ALREADY_EXISTS"}, calls
    methods = {method for method, _ in calls}
    unpacking = {"Snapshots/Prepare", "Diff/Apply", "Snapshots/Commit"}
    assert not methods & unpacking, calls  # nothing unpacked again
    assert ("Snapshots/Stat", "OK") in calls
    assert ("Images/Create", "ALREADY_EXISTS") in calls  # then Images/Update
    assert ("Images/Update", "OK") in calls
    assert f"manifest-{layout.latest.manifest.digest}" in out
    last = out.split("elapsed:")[-2]  # the final progress frame before "unpacking"
    assert "downloading" not in last
    assert set(snapshots(daemon, namespace)) == set(expected_chain(layout))
    assert images(daemon, namespace) == {ref: layout.latest.manifest.digest}


def test_tag_then_rm_and_gc(daemon: Linerd, reg: Registry, layout: BusyboxLayout) -> None:
    namespace = "rm-gc"
    ref = reg.ref(f"{REPO}:latest")
    ctr(daemon, "images", "pull", "--plain-http", ref, namespace=namespace)
    ctr(daemon, "images", "tag", ref, "example.test/copy:one", namespace=namespace)
    digest = layout.latest.manifest.digest
    assert images(daemon, namespace) == {ref: digest, "example.test/copy:one": digest}
    again = ctr(
        daemon, "images", "tag", ref, "example.test/copy:one", namespace=namespace, check=False
    )
    assert again.returncode != 0 and "already exists" in again.stderr

    # one name left: nothing is collected
    ctr(daemon, "images", "rm", "--sync", ref, namespace=namespace)
    assert images(daemon, namespace) == {"example.test/copy:one": digest}
    assert set(snapshots(daemon, namespace)) == set(expected_chain(layout))
    assert digest in content(daemon, namespace)

    # the last one, asynchronously: the scheduled collection empties the namespace
    ctr(daemon, "images", "rm", "example.test/copy:one", namespace=namespace)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if not content(daemon, namespace) and not snapshots(daemon, namespace):
            break
        time.sleep(0.1)
    assert images(daemon, namespace) == {}
    assert content(daemon, namespace) == set()
    assert snapshots(daemon, namespace) == {}
    assert rows(ctr(daemon, "leases", "ls", namespace=namespace).stdout) == []

    # removing what is not there only warns
    missing = ctr(daemon, "images", "rm", ref, namespace=namespace)
    assert "not found" in missing.stderr


def test_rm_sync_collects_at_once(daemon: Linerd, reg: Registry, layout: BusyboxLayout) -> None:
    namespace = "rm-sync"
    refs = [reg.ref(f"{REPO}:{t}") for t in ("latest", "zstd", "v2s2")]
    for ref in refs:
        ctr(daemon, "images", "pull", "--plain-http", ref, namespace=namespace)
    # :latest and :v2s2 share their layers and so their chain; :zstd unpacks to it too
    assert set(snapshots(daemon, namespace)) == set(expected_chain(layout))
    ctr(daemon, "images", "rm", "--sync", *refs, namespace=namespace)
    assert content(daemon, namespace) == set()
    assert snapshots(daemon, namespace) == {}


def transfer_pull(daemon: Linerd, ref: str, namespace: str) -> transfer_pb2.PullProgress:
    with daemon.channel() as channel:
        stub = transfer_pb2_grpc.TransferStub(channel)
        request = transfer_pb2.PullRequest(reference=ref, plain_http=True)
        return list(stub.Pull(request, metadata=ns(namespace)))[-1]


def test_ctr_and_liner_api_see_each_others_pulls(
    daemon: Linerd, reg: Registry, layout: BusyboxLayout
) -> None:
    namespace = "mixed"
    by_ctr = reg.ref(f"{REPO}:latest")
    by_liner = reg.ref(f"{REPO}:zstd")
    ctr(daemon, "images", "pull", "--plain-http", by_ctr, namespace=namespace)
    with daemon.channel() as channel:
        got = (
            images_pb2_grpc.ImagesStub(channel)
            .Get(images_pb2.GetImageRequest(name=by_ctr), metadata=ns(namespace))
            .image
        )
        assert got.target.digest == layout.latest.manifest.digest
        config = (
            content_pb2_grpc.ContentStub(channel)
            .Info(
                content_pb2.InfoRequest(digest=layout.latest.config.digest),
                metadata=ns(namespace),
            )
            .info
        )
        assert (
            config.labels["containerd.io/gc.ref.snapshot.overlayfs"] == expected_chain(layout)[-1]
        )

    final = transfer_pull(daemon, by_liner, namespace)
    assert final.done and final.target.digest == layout.zstd.manifest.digest
    # every blob of the zstd image but the config (shared with :latest) was fetched by liner;
    # its layers unpack to the chain ctr already made, so nothing new was unpacked
    states = {b.descriptor.digest: b.state for b in final.blobs}
    assert states[layout.zstd.config.digest] == "exists"
    assert {states[layer.digest] for layer in layout.zstd.layers} == {"unpacked"}
    assert images(daemon, namespace) == {
        by_ctr: layout.latest.manifest.digest,
        by_liner: layout.zstd.manifest.digest,
    }
    assert set(snapshots(daemon, namespace)) == set(expected_chain(layout))
    # ctr's own read path over liner's pull: content and image info it renders
    listed = {r[0]: r for r in rows(ctr(daemon, "images", "ls", namespace=namespace).stdout)}
    assert "linux/amd64" in listed[by_liner]
    # and ctr can remove what liner pulled
    ctr(daemon, "images", "rm", "--sync", by_ctr, by_liner, namespace=namespace)
    assert content(daemon, namespace) == set()
    assert snapshots(daemon, namespace) == {}


@pytest.mark.parametrize("suffix", ["DJG_", "_abc", "ab--", "a__b"])
def test_lease_ids_as_ctr_makes_them(daemon: Linerd, suffix: str) -> None:
    lease = f"746796909-{suffix}"  # the shape of ctr 1.6's random lease ids (one seen failing)
    with daemon.channel() as channel:
        leases = leases_pb2_grpc.LeasesStub(channel)
        leases.Create(leases_pb2.CreateRequest(id=lease), metadata=ns("lease-ids"))
        leases.Delete(leases_pb2.DeleteRequest(id=lease), metadata=ns("lease-ids"))


def test_images_mount_and_unmount(
    daemon: Linerd, reg: Registry, layout: BusyboxLayout, tmp_path: Path
) -> None:
    # ctr 1.6 names the lease after the target directory: a path is a lease id.
    namespace = "mount"
    ref = reg.ref(f"{REPO}:latest")
    ctr(daemon, "images", "pull", "--plain-http", ref, namespace=namespace)
    target = tmp_path / "m"
    target.mkdir()
    key = str(target)
    ctr(daemon, "images", "mount", ref, key, namespace=namespace)
    try:
        assert os.path.ismount(target)
        assert (target / "bin" / "busybox").read_bytes()[:4] == b"\x7fELF"
        leases = ctr(daemon, "leases", "ls", "-q", namespace=namespace).stdout.split()
        assert key in leases
        assert snapshots(daemon, namespace)[key] == (expected_chain(layout)[-1], "View")
    finally:
        ctr(daemon, "images", "unmount", "--rm", key, namespace=namespace)
    assert not os.path.ismount(target)
    assert key not in snapshots(daemon, namespace)
    assert key not in ctr(daemon, "leases", "ls", "-q", namespace=namespace).stdout.split()
    # the image's own snapshots stay
    assert set(snapshots(daemon, namespace)) == set(expected_chain(layout))
