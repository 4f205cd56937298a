"""Mount option parsing (what mount(8) would make of the options), no mounting."""

from __future__ import annotations

import pytest

from linerd.mounts import (
    MS_BIND,
    MS_NODEV,
    MS_NOSUID,
    MS_PRIVATE,
    MS_RDONLY,
    MS_REC,
    parse_options,
)

pytestmark = pytest.mark.unit


def test_overlay_options_are_data_and_ro_a_flag() -> None:
    p = parse_options(["index=off", "workdir=/w", "upperdir=/u", "lowerdir=/a:/b", "ro"])
    assert p.flags == MS_RDONLY
    assert p.data == "index=off,workdir=/w,upperdir=/u,lowerdir=/a:/b"
    assert p.propagation == 0


def test_flag_words_and_their_negations() -> None:
    assert parse_options(["rbind", "ro"]).flags == MS_BIND | MS_REC | MS_RDONLY
    assert parse_options(["ro", "rw"]).flags == 0  # the last word wins, as in mount(8)
    assert parse_options(["nosuid", "nodev", "defaults"]).flags == MS_NOSUID | MS_NODEV
    assert parse_options(["bind", "rprivate"]).propagation == MS_PRIVATE | MS_REC
    assert parse_options(["bind", "rprivate"]).data == ""
