"""The GC labels pulls and imports write: the names containerd's collector and ctr read."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from linerd.gc import labels
from linerd.gc.collector import label_refs

pytestmark = pytest.mark.unit


def test_index_references_each_manifest_in_order() -> None:
    assert labels.index_refs(["sha256:a", "sha256:b"]) == {
        "containerd.io/gc.ref.content.m.0": "sha256:a",
        "containerd.io/gc.ref.content.m.1": "sha256:b",
    }
    assert labels.index_refs([]) == {}


def test_manifest_references_config_and_layers() -> None:
    assert labels.manifest_refs("sha256:c", iter(["sha256:l0", "sha256:l1"])) == {
        "containerd.io/gc.ref.content.config": "sha256:c",
        "containerd.io/gc.ref.content.l.0": "sha256:l0",
        "containerd.io/gc.ref.content.l.1": "sha256:l1",
    }


def test_snapshot_reference_names_the_snapshotter() -> None:
    assert labels.snapshot_ref("overlayfs", "sha256:top") == {
        "containerd.io/gc.ref.snapshot.overlayfs": "sha256:top"
    }


def test_the_collector_follows_what_is_written() -> None:
    written = {
        **labels.manifest_refs("c", ["l"]),
        **labels.index_refs(["m"]),
        **labels.snapshot_ref("native", "k"),
    }
    assert set(label_refs("ns", written)) == {
        ("ns", "content", "c"),
        ("ns", "content", "l"),
        ("ns", "content", "m"),
        ("ns", "snapshots/native", "k"),
    }


def test_expiry_is_rfc3339_utc() -> None:
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=2)))
    assert labels.expire_after(timedelta(hours=24), now) == {
        "containerd.io/gc.expire": "2026-01-03T01:04:05Z"
    }
    later = datetime.strptime(
        labels.expire_after(timedelta(hours=1))[labels.EXPIRE], "%Y-%m-%dT%H:%M:%SZ"
    ).replace(tzinfo=UTC)
    assert later > datetime.now(UTC)


def test_source_key_leaves_the_port_out_and_paths_name_each_label() -> None:
    assert labels.source_key("127.0.0.1:5000") == "containerd.io/distribution.source.127.0.0.1"
    assert labels.field_paths({"a": "1", "b.c": "2"}) == ["labels.a", "labels.b.c"]


def test_has_gc_refs_matches_what_the_collector_follows() -> None:
    from linerd.gc.collector import label_refs
    from linerd.gc.labels import has_gc_refs

    cases = [
        {},
        {"io.kubernetes.pod.name": "p", "containerd.io/gc.root": "x"},
        {"containerd.io/gc.ref.content": "sha256:1"},
        {"containerd.io/gc.ref.content.l.0": "sha256:1"},
        {"containerd.io/gc.ref.contentx": "sha256:1"},
        {"containerd.io/gc.ref.snapshot.overlayfs": "k"},
        {"containerd.io/gc.ref.snapshot.overlayfs/1": "k"},
        {"containerd.io/gc.ref.snapshot.": "k"},
    ]
    for case in cases:
        assert has_gc_refs(case) == bool(list(label_refs("ns", case))), case
