"""Choosing an index's manifests by platform, as pulls, pushes, imports and exports do."""

from __future__ import annotations

import pytest

from liner_common import platforms
from liner_common.platforms import Platform

pytestmark = pytest.mark.unit

AMD64 = Platform("linux", "amd64")
ARM64 = Platform("linux", "arm64")
ARM_V7 = Platform("linux", "arm", "v7")
ENTRIES = [
    ("attestation", None),
    ("arm-v7", Platform("linux", "arm", "v7")),
    ("arm64-v8", Platform("linux", "arm64", "v8")),
    ("amd64", Platform("linux", "amd64")),
    ("amd64-again", Platform("Linux", "x86_64")),
]


def _platform(entry: tuple[str, Platform | None]) -> Platform | None:
    return entry[1]


def _names(entries: list[tuple[str, Platform | None]]) -> list[str]:
    return [name for name, _ in entries]


def test_select_keeps_the_index_order_of_every_match() -> None:
    assert _names(platforms.select(ENTRIES, _platform, [AMD64])) == ["amd64", "amd64-again"]
    assert _names(platforms.select(ENTRIES, _platform, [AMD64, ARM_V7])) == [
        "arm-v7",
        "amd64",
        "amd64-again",
    ]
    assert platforms.select(ENTRIES, _platform, []) == []


def test_first_is_the_first_match_in_index_order_or_none() -> None:
    assert platforms.first(ENTRIES, _platform, [AMD64, ARM_V7]) == ENTRIES[1]
    assert platforms.first(ENTRIES, _platform, [Platform("linux", "s390x")]) is None


def test_containerd_normalization_applies() -> None:
    # arm64 and arm64/v8 are one platform; an empty variant matches any
    assert platforms.first(ENTRIES, _platform, [ARM64]) == ENTRIES[2]
    assert _names(platforms.select(ENTRIES, _platform, [Platform("linux", "arm")])) == ["arm-v7"]
    assert platforms.select(ENTRIES, _platform, [Platform("linux", "arm", "v6")]) == []


def test_an_entry_without_a_platform_matches_nothing() -> None:
    assert not platforms.matches_any(None, [AMD64])
    assert platforms.matches_any(AMD64, [ARM64, AMD64])


def test_nothing_asked_for_means_this_machine() -> None:
    assert platforms.or_host([]) == [platforms.host_platform()]
    assert platforms.or_host((ARM64,)) == [ARM64]


def test_the_module_stays_pure() -> None:
    import ast
    from pathlib import Path

    tree = ast.parse(Path(platforms.__file__).read_text())
    imported = {
        (node.module or "") if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    assert not {m for m in imported if m.split(".")[0] in ("linerd", "liner", "liner_api")}
