"""The real ctr pulls large layers while linerd stages them (linerd.prestage): ctr writes a
layer with Content.Write, linerd unpacks it into a scratch directory meanwhile (in a worker
process), and ctr's Diff.Apply only moves the files into its snapshot."""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from imagebuild import OCI_MANIFEST, Entry, build_config, build_layer, build_manifest, dir_, file
from registry import Registry
from support import Linerd, mounted, ns

from liner_api.containerd.services.leases.v1 import leases_pb2, leases_pb2_grpc
from liner_api.containerd.services.snapshots.v1 import snapshots_pb2 as spb
from liner_api.containerd.services.snapshots.v1 import snapshots_pb2_grpc

pytestmark = [
    pytest.mark.compat,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mounts)"),
]

# Incompressible, so the gzip blob is over the worker's 4 MiB too.
BIG = random.Random(11).randbytes(6 << 20)


@pytest.fixture(scope="module")
def reg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    r = Registry("open", workdir=tmp_path_factory.mktemp("prestage-registry"))
    r.start()
    yield r
    r.stop()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Linerd]:
    d = Linerd(tmp_path_factory.mktemp("prestage"))
    d.start()
    yield d
    d.stop()


def publish(reg: Registry, repo: str, layers: list[list[Entry]]) -> tuple[str, list[str]]:
    built = [build_layer(entries, "gzip") for entries in layers]
    config = build_config([layer.diff_id for layer in built])
    manifest = build_manifest(config, built)
    blobs = [config.data, *(layer.blob.data for layer in built)]
    reg.push_raw(repo, "v1", manifest.data, OCI_MANIFEST, blobs)
    return f"{reg.host}/{repo}:v1", [layer.diff_id for layer in built]


def ctr(daemon: Linerd, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ctr", "--address", daemon.address, "--namespace", "prestage", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if not k.startswith("CONTAINERD_")},
    )


def chain_top(diff_ids: list[str]) -> str:
    chain = diff_ids[0]
    for diff_id in diff_ids[1:]:
        chain = "sha256:" + hashlib.sha256(f"{chain} {diff_id}".encode()).hexdigest()
    return chain


def test_ctr_pull_applies_layers_staged_while_written(
    daemon: Linerd, reg: Registry, tmp_path: Path
) -> None:
    ref, diff_ids = publish(
        reg,
        "prestage/ok",
        [
            [dir_("data"), file("data/big", BIG), file("data/gone", "lower")],
            [file("data/more", BIG[::-1]), file("data/.wh.gone", b"")],
        ],
    )
    result = ctr(daemon, "images", "pull", "--plain-http", ref)
    assert result.returncode == 0, result.stderr
    assert daemon.log().count("layer applied from its prestage") == 2
    assert not list((daemon.root / "snapshots" / "prestage").iterdir())
    with daemon.channel() as channel:
        leases_pb2_grpc.LeasesStub(channel).Create(
            leases_pb2.CreateRequest(id="check"), metadata=ns("prestage")
        )
        view = snapshots_pb2_grpc.SnapshotsStub(channel).View(
            spb.ViewSnapshotRequest(
                snapshotter="overlayfs", key="check", parent=chain_top(diff_ids)
            ),
            metadata=ns("prestage", "check"),
        )
        with mounted(view.mounts, tmp_path / "view") as root:
            assert (root / "data/big").read_bytes() == BIG
            assert (root / "data/more").read_bytes() == BIG[::-1]
            assert not (root / "data/gone").exists()


def test_ctr_pull_of_a_hostile_large_layer_fails_and_leaves_nothing(
    daemon: Linerd, reg: Registry, tmp_path: Path
) -> None:
    ref, _ = publish(
        reg, "prestage/hostile", [[file("big", BIG), Entry("../../escape-prestage", "file", b"x")]]
    )
    result = ctr(daemon, "images", "pull", "--plain-http", ref)
    assert result.returncode != 0
    assert "escapes the root" in result.stderr
    assert not list((daemon.root / "snapshots" / "prestage").iterdir())
    assert not any(p.name == "escape-prestage" for p in daemon.base.rglob("escape-prestage"))
    assert not Path("/escape-prestage").exists()
