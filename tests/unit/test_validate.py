from __future__ import annotations

import pytest

from linerd.core import validate
from linerd.errdefs import InvalidArgument

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("name", ["default", "k8s.io", "a-b_c.d", "x" * 76, "A1"])
def test_good_identifiers(name: str) -> None:
    assert validate.identifier(name) == name


@pytest.mark.parametrize("name", ["", "-a", "a-", "a..b", "a/b", "x" * 77, "sp ace", "ü"])
def test_bad_identifiers(name: str) -> None:
    with pytest.raises(InvalidArgument):
        validate.identifier(name)


def test_digests() -> None:
    good = "sha256:" + "a" * 64
    assert validate.digest(good) == good
    for bad in ["", "sha256:" + "A" * 64, "sha256:abc", "md5:" + "a" * 32, "a" * 64]:
        with pytest.raises(InvalidArgument):
            validate.digest(bad)


def test_label_mask_sets_removes_and_replaces() -> None:
    current = {"a": "1", "containerd.io/gc.ref.content.l.0": "x"}
    new = {"b": "2", "containerd.io/gc.ref.content.l.0": "y"}
    assert validate.apply_label_mask(
        current, new, ["labels.containerd.io/gc.ref.content.l.0", "labels.a"]
    ) == {"containerd.io/gc.ref.content.l.0": "y"}
    assert validate.apply_label_mask(current, new, ["labels"]) == new
    assert validate.apply_label_mask(current, new, ["other"]) is None
    with pytest.raises(InvalidArgument):
        validate.apply_label_mask(current, new, ["labels."])


def test_oversized_label_is_refused() -> None:
    with pytest.raises(InvalidArgument):
        validate.labels({"k": "v" * 5000})


@pytest.mark.parametrize(
    "lease",
    [
        "/tmp/m",  # ctr images mount names the lease after its target
        "1700000000000000000-Ab_-x9",
        "with spaces and ünïcode",
        "../..",
        "a\0b",
        "x" * 32768,
    ],
)
def test_lease_ids_are_what_containerd_accepts(lease: str) -> None:
    assert validate.lease_id(lease) == lease


@pytest.mark.parametrize("lease", ["", "x" * 32769, "é" * 16385])
def test_lease_ids_refused(lease: str) -> None:
    with pytest.raises(InvalidArgument):
        validate.lease_id(lease)
