"""CNI config loading: which file of a conf dir wins, and what makes one unusable."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from linerd.cri.cni import (
    CNI,
    load_conf_dir,
    parse_config,
    parse_config_list,
)
from linerd.errdefs import FailedPrecondition, InvalidArgument

pytestmark = pytest.mark.unit

BRIDGE = {"type": "bridge", "bridge": "b0", "ipam": {"type": "host-local"}}


def _list(name: str, *plugins: dict, version: str = "1.0.0") -> str:
    return json.dumps({"cniVersion": version, "name": name, "plugins": list(plugins)})


def test_the_lexically_first_file_wins(tmp_path: Path) -> None:
    (tmp_path / "20-b.conflist").write_text(_list("second", BRIDGE))
    (tmp_path / "10-a.conflist").write_text(_list("first", BRIDGE))
    net = load_conf_dir(tmp_path)
    assert net.name == "first" and net.source == str(tmp_path / "10-a.conflist")
    assert [p["type"] for p in net.plugins] == ["bridge"]


def test_a_single_conf_is_wrapped_into_a_list(tmp_path: Path) -> None:
    (tmp_path / "05-one.conf").write_text(
        json.dumps({"cniVersion": "0.4.0", "name": "one", **BRIDGE})
    )
    net = load_conf_dir(tmp_path)
    assert (net.name, net.cni_version, len(net.plugins)) == ("one", "0.4.0", 1)
    assert net.plugins[0]["type"] == "bridge" and net.plugins[0]["bridge"] == "b0"
    assert json.loads(net.raw)["plugins"][0]["ipam"] == {"type": "host-local"}


def test_json_files_count_and_other_extensions_do_not(tmp_path: Path) -> None:
    (tmp_path / "00-notes.txt").write_text("not a config")
    (tmp_path / "01-old.conflist.bak").write_text(_list("backup", BRIDGE))
    (tmp_path / "50-net.json").write_text(json.dumps({"name": "j", **BRIDGE}))
    assert load_conf_dir(tmp_path).name == "j"


@pytest.mark.parametrize(
    ("file", "content", "why"),
    [
        ("00-bad.conflist", "{not json", "not JSON"),
        ("01-empty.conflist", _list("empty"), "no plugins"),
        ("02-notype.conflist", _list("nt", {"bridge": "x"}), "no 'type'"),
        ("03-noname.conflist", json.dumps({"plugins": [BRIDGE]}), "'name'"),
        ("04-list-in.conf", _list("misplaced", BRIDGE), "config list in a single-plugin file"),
        ("05-slash.conflist", _list("sl", {"type": "../bin/sh"}), "invalid plugin type"),
        ("06-badname.conflist", _list("../escape", BRIDGE), "'name'"),
    ],
)
def test_unusable_files_are_skipped_with_a_reason(
    tmp_path: Path, file: str, content: str, why: str
) -> None:
    (tmp_path / file).write_text(content)
    with pytest.raises(FailedPrecondition, match="no usable config") as e:
        load_conf_dir(tmp_path)
    assert why in str(e.value) and file in str(e.value)
    (tmp_path / "99-good.conflist").write_text(_list("good", BRIDGE))
    assert load_conf_dir(tmp_path).name == "good"


def test_no_dir_or_no_file_means_not_initialized(tmp_path: Path) -> None:
    with pytest.raises(FailedPrecondition, match="does not exist"):
        load_conf_dir(tmp_path / "missing")
    with pytest.raises(FailedPrecondition, match="no network config found"):
        load_conf_dir(tmp_path)


def test_disable_check_accepts_libcni_forms() -> None:
    doc = {"cniVersion": "1.0.0", "name": "n", "plugins": [BRIDGE]}
    assert not parse_config_list(json.dumps(doc).encode()).disable_check
    for value, expected in ((True, True), ("true", True), ("False", False)):
        raw = json.dumps({**doc, "disableCheck": value}).encode()
        assert parse_config_list(raw).disable_check is expected
    with pytest.raises(InvalidArgument):
        parse_config_list(json.dumps({**doc, "disableCheck": "maybe"}).encode())


def test_parse_config_needs_a_type() -> None:
    with pytest.raises(InvalidArgument, match="no 'type'"):
        parse_config(b'{"name": "n", "cniVersion": "1.0.0"}')


def test_network_ready_follows_the_conf_dir(tmp_path: Path) -> None:
    cni = CNI(conf_dir=tmp_path, cache_dir=tmp_path / "cache")
    status = asyncio.run(cni.status())
    assert not status.ready
    assert status.reason == "NetworkPluginNotReady" and "no network config" in status.message
    (tmp_path / "10-net.conflist").write_text(_list("pods", BRIDGE))
    status = asyncio.run(cni.status())
    assert status.ready and status.network == "pods"
