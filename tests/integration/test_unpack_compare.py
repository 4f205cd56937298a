"""The tree linerd unpacks, compared entry by entry with independent unpackers of the same
layers: `umoci unpack` of the OCI layout, and GNU tar extracting the layers in order with the
OCI whiteouts applied by hand.

Compared per path: type, mode (permission bits incl. setuid/sticky), uid, gid, sha256 of file
content, symlink target, device numbers, mtime of non-directories, xattrs (overlayfs' own
`trusted.overlay.*` excluded), and hard-link groups.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import random
import shutil
import stat
import subprocess
import tarfile
import threading
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from imagebuild import (
    OCI_LAYER,
    Blob,
    BusyboxLayout,
    Layer,
    OCILayout,
    build_config,
    build_manifest,
    copy_layout,
    sha256,
)
from registry import Registry, ThrottlingProxy
from support import Linerd, mounted, ns

from liner_api.containerd.services.content.v1 import content_pb2, content_pb2_grpc
from liner_api.containerd.services.leases.v1 import leases_pb2, leases_pb2_grpc
from liner_api.containerd.services.snapshots.v1 import snapshots_pb2 as spb
from liner_api.containerd.services.snapshots.v1 import snapshots_pb2_grpc
from liner_api.liner.services.transfer.v1 import transfer_pb2, transfer_pb2_grpc

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (ownership, mounts)"),
]

Tree = dict[str, dict[str, Any]]


def snapshot_tree(root: Path) -> tuple[Tree, set[frozenset[str]]]:
    """Every entry under `root` (root itself excluded), and the hard-link groups."""
    tree: Tree = {}
    inodes: dict[tuple[int, int], list[str]] = defaultdict(list)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            st = os.lstat(path)
            entry: dict[str, Any] = {
                "type": stat.S_IFMT(st.st_mode),
                "mode": oct(stat.S_IMODE(st.st_mode)),
                "uid": st.st_uid,
                "gid": st.st_gid,
            }
            if stat.S_ISREG(st.st_mode):
                entry["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
                entry["size"] = st.st_size
                inodes[(st.st_dev, st.st_ino)].append(rel)
            elif stat.S_ISLNK(st.st_mode):
                entry["target"] = os.readlink(path)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                entry["rdev"] = (os.major(st.st_rdev), os.minor(st.st_rdev))
            if not stat.S_ISDIR(st.st_mode):
                entry["mtime"] = st.st_mtime_ns // 1_000_000_000
            if stat.S_ISLNK(st.st_mode) and entry["mode"] == "0o777":
                entry.pop("mode")  # symlink modes carry no meaning
            xattrs = {}
            for key in os.listxattr(path, follow_symlinks=False):
                if not key.startswith("trusted.overlay."):
                    xattrs[key] = os.getxattr(path, key, follow_symlinks=False)
            if xattrs:
                entry["xattrs"] = xattrs
            tree[rel] = entry
    groups = {frozenset(paths) for paths in inodes.values() if len(paths) > 1}
    return tree, groups


def assert_same(got: tuple[Tree, set[frozenset[str]]], want: tuple[Tree, set[frozenset[str]]]):
    got_tree, got_links = got
    want_tree, want_links = want
    assert sorted(got_tree) == sorted(want_tree)
    for path in want_tree:
        assert got_tree[path] == want_tree[path], path
    assert got_links == want_links


# -- the reference unpackers -------------------------------------------------------------


def umoci_unpack(layout_dir: Path, tag: str, work: Path) -> tuple[Tree, set[frozenset[str]]]:
    if shutil.which("umoci") is None:
        pytest.skip("umoci is not installed")
    layout = copy_layout(layout_dir, work / "layout")  # umoci may touch the layout
    bundle = work / "bundle"
    subprocess.run(
        ["umoci", "unpack", "--image", f"{layout}:{tag}", str(bundle)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return snapshot_tree(bundle / "rootfs")


@pytest.fixture(scope="module")
def umoci_tree(
    busybox_layout: BusyboxLayout, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Tree, set[frozenset[str]]]:
    # umoci 0.4.7 cannot read +zstd layers: :latest (gzip) has the same uncompressed tars
    return umoci_unpack(busybox_layout.path, "latest", tmp_path_factory.mktemp("umoci"))


def whiteouts_then_extract(tar_bytes: bytes, root: Path) -> None:
    """One layer the way the OCI spec says: whiteouts hide lower entries, then extract."""
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        members = [(m.name.lstrip("./"), m.isdir()) for m in tar.getmembers()]
    for name, is_dir in members:
        parent, _, base = name.rpartition("/")
        # an entry replacing one of another kind (file <-> directory) replaces it whole
        existing = root / name
        if existing.is_symlink() or existing.exists():
            if is_dir and (existing.is_symlink() or not existing.is_dir()):
                existing.unlink()
            elif not is_dir and existing.is_dir() and not existing.is_symlink():
                shutil.rmtree(existing)
        where = root / parent
        if base == ".wh..wh..opq":
            for child in where.iterdir() if where.is_dir() else []:
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
        elif base.startswith(".wh."):
            victim = where / base[len(".wh.") :]
            if victim.is_dir() and not victim.is_symlink():
                shutil.rmtree(victim)
            elif victim.exists() or victim.is_symlink():
                victim.unlink()
    subprocess.run(
        [
            *("tar", "-x", "-f", "-", "-C", str(root), "--numeric-owner", "--same-owner"),
            *("--same-permissions", "--xattrs", "--xattrs-include=*", "--exclude=.wh.*"),
        ],
        input=tar_bytes,
        check=True,
        capture_output=True,
        timeout=60,
    )


def gnu_tar_unpack(tars: list[bytes], work: Path) -> tuple[Tree, set[frozenset[str]]]:
    root = work / "rootfs"
    root.mkdir(parents=True)
    for tar in tars:
        whiteouts_then_extract(tar, root)
    return snapshot_tree(root)


@pytest.fixture(scope="module")
def tar_tree(
    busybox_layout: BusyboxLayout, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Tree, set[frozenset[str]]]:
    blobs = busybox_layout.path / "blobs/sha256"
    tars = [
        gzip.decompress((blobs / layer.digest.split(":")[1]).read_bytes())
        for layer in busybox_layout.latest.layers
    ]
    return gnu_tar_unpack(tars, tmp_path_factory.mktemp("gnutar"))


# -- a second image with what busybox lacks ---------------------------------------------


def _member(name: str, kind: bytes = tarfile.REGTYPE, **kw: Any) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mtime, info.uname, info.gname = kind, 1_600_000_000, "", ""
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    for key, value in kw.items():
        setattr(info, key, value)
    return info


def _tar(members: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            info.size = len(data) if info.type == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(data) if data else None)
    return buf.getvalue()


def tricky_layers() -> list[bytes]:
    xattr = {"SCHILY.xattr.user.liner": "one", "SCHILY.xattr.user.empty": ""}
    lower = _tar(
        [
            (_member("d", tarfile.DIRTYPE), b""),
            (_member("d/xattrs", pax_headers=xattr), b"with xattrs\n"),
            (_member("d/suid", mode=0o4755), b"#!/bin/sh\n"),
            (_member("d/sgid", mode=0o2711, uid=7, gid=8), b"g\n"),
            (_member("sticky", tarfile.DIRTYPE, mode=0o1777, uid=5, gid=6), b""),
            (_member("sticky/old"), b"hidden later\n"),
            (_member("d/fifo", tarfile.FIFOTYPE), b""),
            (_member("d/null", tarfile.CHRTYPE, devmajor=1, devminor=3, mode=0o666), b""),
            (_member("d/becomes-dir"), b"file first\n"),
            (_member("d/becomes-file", tarfile.DIRTYPE), b""),
            (_member("d/becomes-file/inner"), b"gone with its dir\n"),
            (_member("d/sym", tarfile.SYMTYPE, linkname="../sticky/old"), b""),
            (_member("d/lowerfile", uid=3, gid=4, mode=0o640), b"linked from above\n"),
            (_member("d/dir-gone", tarfile.DIRTYPE), b""),
            (_member("d/dir-gone/x"), b"x\n"),
            (_member("empty", tarfile.DIRTYPE, mode=0o700, uid=9, gid=9), b""),
            # Incompressible bytes make the blob span several chunks of a throttled serve.
            (_member("padding"), random.Random(7).randbytes(256 << 10)),
        ]
    )
    upper = _tar(
        [
            (_member("d/becomes-dir", tarfile.DIRTYPE, mode=0o750), b""),
            (_member("d/becomes-dir/in"), b"now a dir\n"),
            (_member("d/becomes-file"), b"now a file\n"),
            (_member("d/link-to-lower", tarfile.LNKTYPE, linkname="d/lowerfile"), b""),
            (_member("d/.wh.sym"), b""),
            (_member("d/.wh.dir-gone"), b""),
            (_member("sticky/.wh..wh..opq"), b""),
            (_member("sticky/new", mode=0o600), b"fresh\n"),
            (_member("d/xattrs", pax_headers={"SCHILY.xattr.user.liner": "two"}), b"changed\n"),
            (_member("d/sub/deep/file", mode=0o444), b"implicit parents\n"),
        ]
    )
    return [lower, upper]


@pytest.fixture(scope="module")
def tricky(
    registry: Registry, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, list[bytes], str]:
    """(OCI layout, uncompressed layer tars, reference in the registry) of the tricky image."""
    tars = tricky_layers()
    layers = [Layer(Blob(OCI_LAYER + "+gzip", gzip.compress(t, mtime=0)), sha256(t)) for t in tars]
    config = build_config([layer.diff_id for layer in layers])
    manifest = build_manifest(config, layers)
    layout = OCILayout(tmp_path_factory.mktemp("tricky") / "layout")
    layout.add(config, *layers)
    layout.tag(manifest, "tricky")
    ref = registry.push_layout(layout.path, "cmp/tricky:t", tag="tricky")
    return layout.path, tars, ref


# -- linerd ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Linerd]:
    d = Linerd(tmp_path_factory.mktemp("unpack-compare"))
    d.start()
    yield d
    d.stop()


def linerd_tree(
    daemon: Linerd,
    ref: str,
    namespace: str,
    snapshotter: str,
    tmp: Path,
    on_update: Callable[[Any], None] = lambda update: None,
) -> tuple[Tree, set[frozenset[str]]]:
    md = ns(namespace)
    with daemon.channel() as channel:
        request = transfer_pb2.PullRequest(
            reference=ref,
            plain_http=True,
            snapshotter=snapshotter,
        )
        for final in transfer_pb2_grpc.TransferStub(channel).Pull(request, metadata=md):
            on_update(final)
        assert final.done
        manifest_info = content_pb2_grpc.ContentStub(channel).Info(
            content_pb2.InfoRequest(digest=final.target.digest), metadata=md
        )
        config = manifest_info.info.labels["containerd.io/gc.ref.content.config"]
        top = (
            content_pb2_grpc.ContentStub(channel)
            .Info(content_pb2.InfoRequest(digest=config), metadata=md)
            .info.labels[f"containerd.io/gc.ref.snapshot.{snapshotter}"]
        )
        leases = leases_pb2_grpc.LeasesStub(channel)
        leases.Create(leases_pb2.CreateRequest(id="view"), metadata=md)
        snaps = snapshots_pb2_grpc.SnapshotsStub(channel)
        mounts = snaps.View(
            spb.ViewSnapshotRequest(snapshotter=snapshotter, key="view", parent=top),
            metadata=ns(namespace, "view"),
        ).mounts
        try:
            with mounted(mounts, tmp / "view") as root:
                return snapshot_tree(root)
        finally:
            snaps.Remove(
                spb.RemoveSnapshotRequest(snapshotter=snapshotter, key="view"), metadata=md
            )
            leases.Delete(leases_pb2.DeleteRequest(id="view"), metadata=md)


@pytest.mark.parametrize("tag", ["latest", "zstd", "uncompressed"])
@pytest.mark.parametrize("snapshotter", ["overlayfs", "native"])
def test_linerd_unpack_matches_umoci_and_gnu_tar(
    daemon: Linerd,
    registry: Registry,
    umoci_tree: tuple[Tree, set[frozenset[str]]],
    tar_tree: tuple[Tree, set[frozenset[str]]],
    tag: str,
    snapshotter: str,
    tmp_path: Path,
) -> None:
    got = linerd_tree(
        daemon,
        registry.ref(f"library/busybox:{tag}"),
        f"cmp-{tag}-{snapshotter}",
        snapshotter,
        tmp_path,
    )
    tree, links = got
    # the comparison is not vacuous: the interesting entries are there
    assert tree["data/owned"]["uid"] == 1000 and tree["tmp"]["mode"] == "0o1777"
    assert frozenset({"data/a.txt", "data/hard"}) in links
    assert "data/remove-me" not in tree and "data/opaque/old1" not in tree
    assert_same(got, umoci_tree)
    assert_same(got, tar_tree)


def test_references_agree(
    umoci_tree: tuple[Tree, set[frozenset[str]]], tar_tree: tuple[Tree, set[frozenset[str]]]
) -> None:
    assert_same(tar_tree, umoci_tree)


@pytest.mark.parametrize("snapshotter", ["overlayfs", "native"])
def test_tricky_image_matches_umoci_and_gnu_tar(
    daemon: Linerd,
    tricky: tuple[Path, list[bytes], str],
    snapshotter: str,
    tmp_path: Path,
) -> None:
    layout, tars, ref = tricky
    got = linerd_tree(daemon, ref, f"tricky-{snapshotter}", snapshotter, tmp_path / "linerd")
    by_umoci = umoci_unpack(layout, "tricky", tmp_path / "umoci")
    by_tar = gnu_tar_unpack(tars, tmp_path / "tar")
    tree, links = got
    assert tree["d/xattrs"]["xattrs"] == {"user.liner": b"two"}
    assert tree["d/suid"]["mode"] == "0o4755" and tree["sticky"]["mode"] == "0o1777"
    assert tree["d/null"]["rdev"] == (1, 3) and stat.S_ISFIFO(tree["d/fifo"]["type"])
    assert stat.S_ISDIR(tree["d/becomes-dir"]["type"])
    assert stat.S_ISREG(tree["d/becomes-file"]["type"])
    assert sorted(p for p in tree if p.startswith("sticky/")) == ["sticky/new"]
    assert "d/sym" not in tree and "d/dir-gone" not in tree
    assert frozenset({"d/lowerfile", "d/link-to-lower"}) in links
    assert_same(by_tar, by_umoci)
    assert_same(got, by_umoci)


@pytest.mark.parametrize("snapshotter", ["overlayfs", "native"])
def test_layers_unpack_in_parallel(
    linerd: Linerd,
    registry: Registry,
    tricky: tuple[Path, list[bytes], str],
    snapshotter: str,
    tmp_path: Path,
) -> None:
    """The upper layer unpacks (staged) while the lower one is still downloading, held after
    its first chunk; the result still equals umoci's. Unpacking one layer after the other,
    the upper layer would not start before the hold's 30 s fallback. (A daemon of its own:
    one that has the blobs already would not download them.)"""
    layout, tars, ref = tricky
    lower = hashlib.sha256(gzip.compress(tars[0], mtime=0)).hexdigest()
    gate = threading.Event()
    proxy = ThrottlingProxy(registry.host, hold={lower: gate})
    fallback = threading.Timer(30, gate.set)
    fallback.start()
    seen: list[str] = []

    def on_update(update: Any) -> None:
        blobs = {b.descriptor.digest: b for b in update.blobs}
        low = blobs.get(f"sha256:{lower}")
        others = [
            b
            for d, b in blobs.items()
            if d != f"sha256:{lower}" and "layer" in b.descriptor.media_type
        ]
        held = low is not None and low.offset < low.descriptor.size
        if held and others and all(b.state == "unpacking" for b in others):
            seen.append(low.state)
            gate.set()

    try:
        got = linerd_tree(
            linerd,
            ref.replace(registry.host, proxy.host),
            f"parallel-{snapshotter}",
            snapshotter,
            tmp_path / "linerd",
            on_update,
        )
    finally:
        fallback.cancel()
        gate.set()
        proxy.stop()
    assert seen, "the upper layer never unpacked while the lower one was downloading"
    assert_same(got, umoci_unpack(layout, "tricky", tmp_path / "umoci"))
    assert not list((linerd.root / "snapshots" / "prestage").iterdir())
