"""linerd.cri.mounts: the CRI's bind mounts (propagation, symlinks, created host paths) and
host devices, applied to an OCI spec."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest

from liner_api.runtime.v1 import api_pb2
from liner_common.ocispec import default_spec
from linerd.cri import mounts
from linerd.cri.mounts import (
    MountInfo,
    apply_devices,
    apply_mounts,
    ensure_shared,
    ensure_shared_or_slave,
    lookup_mount,
    parse_mountinfo,
)
from linerd.errdefs import FailedPrecondition, InvalidArgument

pytestmark = pytest.mark.unit

MOUNTINFO = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
40 27 0:40 / /srv/shared rw,relatime shared:7 - tmpfs tmpfs rw
41 40 0:41 / /srv/shared/inner rw,relatime master:7 - tmpfs tmpfs rw
42 27 0:42 / /srv/slave rw,relatime master:3 propagate_from:2 - tmpfs tmpfs rw
43 27 0:43 / /srv/with\\040space rw,relatime shared:9 - tmpfs tmpfs rw
44 27 0:44 / /srv/stacked rw,relatime shared:10 - tmpfs tmpfs rw
45 27 0:45 / /srv/stacked rw,relatime - tmpfs tmpfs rw
"""
INFOS = parse_mountinfo(MOUNTINFO)


def test_parse_mountinfo() -> None:
    by_point = {m.mount_point: m for m in INFOS}
    assert by_point["/srv/shared"] == MountInfo("/srv/shared", ("shared:7",))
    assert by_point["/srv/slave"].optional == ("master:3", "propagate_from:2")
    assert by_point["/srv/slave"].slave and not by_point["/srv/slave"].shared
    assert "/srv/with space" in by_point  # \040 unescaped
    assert by_point["/"].optional == ()


def test_lookup_mount_longest_prefix_last_stacked() -> None:
    assert lookup_mount("/srv/shared/a/b", INFOS).mount_point == "/srv/shared"
    assert lookup_mount("/srv/shared", INFOS).mount_point == "/srv/shared"
    assert lookup_mount("/srv/shared/inner/x", INFOS).mount_point == "/srv/shared/inner"
    assert lookup_mount("/srv/sharedx", INFOS).mount_point == "/"
    assert lookup_mount("/srv/with space/v", INFOS).shared
    assert lookup_mount("/srv/stacked/v", INFOS).optional == ()  # the top one counts


def test_propagation_checks() -> None:
    ensure_shared("/srv/shared/vol", INFOS)
    ensure_shared_or_slave("/srv/shared/vol", INFOS)
    ensure_shared_or_slave("/srv/slave/vol", INFOS)
    ensure_shared_or_slave("/srv/shared/inner/vol", INFOS)
    with pytest.raises(FailedPrecondition, match="not a shared mount"):
        ensure_shared("/srv/slave/vol", INFOS)
    with pytest.raises(FailedPrecondition, match="'/' but it is not a shared or slave"):
        ensure_shared_or_slave("/var/lib/x", INFOS)


# -- apply_mounts ---------------------------------------------------------------------------


def spec() -> dict[str, Any]:
    return default_spec("k8s.io", "c1")


def mount(
    container: str, host: str | Path, propagation: int = api_pb2.PROPAGATION_PRIVATE, **kw: Any
) -> api_pb2.Mount:
    return api_pb2.Mount(
        container_path=container, host_path=str(host), propagation=propagation, **kw
    )


def cri_mounts(s: dict[str, Any]) -> list[dict[str, Any]]:
    return [m for m in s["mounts"] if m["type"] == "bind"]


@pytest.fixture
def fake_mountinfo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Host dirs on a shared, a slave and a private mount (tmp_path itself is private)."""
    dirs = {name: tmp_path / name for name in ("shared", "slave", "private")}
    for d in dirs.values():
        d.mkdir()
    text = (
        "27 1 254:0 / / rw - ext4 /dev/vda rw\n"
        f"50 27 0:50 / {dirs['shared']} rw shared:1 - tmpfs t rw\n"
        f"51 27 0:51 / {dirs['slave']} rw master:1 - tmpfs t rw\n"
    )
    monkeypatch.setattr(mounts, "read_mountinfo", lambda: parse_mountinfo(text))
    return dirs


def test_private_read_only_and_read_write(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    s = spec()
    apply_mounts(s, [mount("/data", tmp_path / "a", readonly=True), mount("/rw", tmp_path / "a")])
    assert cri_mounts(s) == [
        {
            "destination": "/data",
            "type": "bind",
            "source": str(tmp_path / "a"),
            "options": ["rbind", "rprivate", "ro"],
        },
        {
            "destination": "/rw",
            "type": "bind",
            "source": str(tmp_path / "a"),
            "options": ["rbind", "rprivate", "rw"],
        },
    ]
    assert "rootfsPropagation" not in s["linux"]


def test_host_path_symlinks_resolved(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    s = spec()
    apply_mounts(s, [mount("/vol", tmp_path / "link")])
    assert cri_mounts(s)[0]["source"] == str(tmp_path / "real")


def test_missing_host_path_is_created(tmp_path: Path) -> None:
    s = spec()
    apply_mounts(s, [mount("/vol", tmp_path / "new" / "dir")])
    assert (tmp_path / "new" / "dir").is_dir()
    assert stat.S_IMODE((tmp_path / "new" / "dir").stat().st_mode) == 0o755 & ~_umask()
    assert cri_mounts(s)[0]["source"] == str(tmp_path / "new" / "dir")


def _umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old


def test_host_path_that_cannot_be_created(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(InvalidArgument, match="cannot create host path"):
        apply_mounts(spec(), [mount("/vol", tmp_path / "file" / "sub")])
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere" / "x")
    with pytest.raises(InvalidArgument, match="host path"):
        apply_mounts(spec(), [mount("/vol", tmp_path / "dangling")])


@pytest.mark.parametrize(
    ("container", "host"),
    [("relative", "/tmp"), ("", "/tmp"), ("/vol", "relative"), ("/vol", "")],
)
def test_paths_must_be_absolute(container: str, host: str) -> None:
    with pytest.raises(InvalidArgument, match="absolute"):
        apply_mounts(spec(), [mount(container, host)])


def test_bidirectional_needs_a_shared_source(fake_mountinfo: dict[str, Path]) -> None:
    s = spec()
    src = fake_mountinfo["shared"] / "vol"
    apply_mounts(s, [mount("/vol", src, api_pb2.PROPAGATION_BIDIRECTIONAL)])
    assert cri_mounts(s)[0]["options"] == ["rbind", "rshared", "rw"]
    assert s["linux"]["rootfsPropagation"] == "rshared"
    for name in ("slave", "private"):
        with pytest.raises(FailedPrecondition, match="not a shared mount"):
            apply_mounts(
                spec(), [mount("/vol", fake_mountinfo[name], api_pb2.PROPAGATION_BIDIRECTIONAL)]
            )


def test_host_to_container_needs_shared_or_slave(fake_mountinfo: dict[str, Path]) -> None:
    for name in ("shared", "slave"):
        s = spec()
        apply_mounts(
            s, [mount("/vol", fake_mountinfo[name], api_pb2.PROPAGATION_HOST_TO_CONTAINER)]
        )
        assert cri_mounts(s)[0]["options"] == ["rbind", "rslave", "rw"]
        assert s["linux"]["rootfsPropagation"] == "rslave"
    with pytest.raises(FailedPrecondition, match="not a shared or slave"):
        apply_mounts(
            spec(),
            [mount("/vol", fake_mountinfo["private"], api_pb2.PROPAGATION_HOST_TO_CONTAINER)],
        )


def test_rshared_root_propagation_is_not_downgraded(fake_mountinfo: dict[str, Path]) -> None:
    s = spec()
    apply_mounts(
        s,
        [
            mount("/a", fake_mountinfo["shared"], api_pb2.PROPAGATION_BIDIRECTIONAL),
            mount("/b", fake_mountinfo["shared"], api_pb2.PROPAGATION_HOST_TO_CONTAINER),
        ],
    )
    assert s["linux"]["rootfsPropagation"] == "rshared"


def test_unknown_propagation_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="propagation"):
        apply_mounts(spec(), [mount("/vol", tmp_path, 7)])


def test_a_cri_mount_replaces_a_default_at_the_same_destination(tmp_path: Path) -> None:
    s = spec()
    s["mounts"].append(
        {"destination": "/etc/hosts", "type": "bind", "source": "/x", "options": ["rbind"]}
    )
    (tmp_path / "hosts").write_text("")
    apply_mounts(s, [mount("/dev/shm/", tmp_path), mount("/etc/hosts", tmp_path / "hosts")])
    shm = [m for m in s["mounts"] if m["destination"] == "/dev/shm"]
    assert shm == [
        {
            "destination": "/dev/shm",
            "type": "bind",
            "source": str(tmp_path),
            "options": ["rbind", "rprivate", "rw"],
        }
    ]
    [hosts] = [m for m in s["mounts"] if m["destination"] == "/etc/hosts"]
    assert hosts["source"] == str(tmp_path / "hosts")
    assert [m["destination"] for m in s["mounts"]].count("/dev/mqueue") == 1


def test_a_cri_dev_mount_replaces_everything_under_dev(tmp_path: Path) -> None:
    s = spec()
    apply_mounts(s, [mount("/dev", tmp_path)])
    dests = [m["destination"] for m in s["mounts"]]
    assert [d for d in dests if d.startswith("/dev")] == ["/dev"]
    assert "/proc" in dests and "/sys" in dests


def test_parents_before_children(tmp_path: Path) -> None:
    s = spec()
    apply_mounts(s, [mount("/a/b/c", tmp_path), mount("/a", tmp_path), mount("/x/y", tmp_path)])
    assert [m["destination"] for m in cri_mounts(s)] == ["/a", "/x/y", "/a/b/c"]


def test_recursive_read_only(tmp_path: Path, fake_mountinfo: dict[str, Path]) -> None:
    s = spec()
    apply_mounts(s, [mount("/v", tmp_path, readonly=True, recursive_read_only=True)])
    assert cri_mounts(s)[0]["options"] == ["rbind", "rprivate", "rro"]
    with pytest.raises(InvalidArgument, match="needs readonly"):
        apply_mounts(spec(), [mount("/v", tmp_path, recursive_read_only=True)])
    with pytest.raises(InvalidArgument, match="private propagation"):
        apply_mounts(
            spec(),
            [
                mount(
                    "/v",
                    fake_mountinfo["shared"],
                    api_pb2.PROPAGATION_HOST_TO_CONTAINER,
                    readonly=True,
                    recursive_read_only=True,
                )
            ],
        )


def test_unsupported_mount_kinds_are_refused(tmp_path: Path) -> None:
    idmapped = mount("/v", tmp_path)
    idmapped.uidMappings.add(host_id=1000, container_id=0, length=1)
    with pytest.raises(InvalidArgument, match="id-mapped"):
        apply_mounts(spec(), [idmapped])
    image = mount("/v", tmp_path, image=api_pb2.ImageSpec(image="busybox"))
    with pytest.raises(InvalidArgument, match="image volumes"):
        apply_mounts(spec(), [image])


def test_no_mounts_changes_nothing() -> None:
    s = spec()
    apply_mounts(s, [])
    assert s == spec()


# -- devices --------------------------------------------------------------------------------


def rule_for(s: dict[str, Any], major: int, minor: int) -> list[dict[str, Any]]:
    return [
        r
        for r in s["linux"]["resources"]["devices"]
        if r.get("major") == major and r.get("minor") == minor and r.get("type") == "c"
    ]


def test_device_by_path() -> None:
    s = spec()
    default_rules = list(s["linux"]["resources"]["devices"])
    apply_devices(
        s,
        [api_pb2.Device(host_path="/dev/null", container_path="/dev/mynull", permissions="rw")],
        privileged=False,
    )
    [dev] = s["linux"]["devices"]
    st = os.stat("/dev/null")
    assert dev == {
        "path": "/dev/mynull",
        "type": "c",
        "major": 1,
        "minor": 3,
        "fileMode": stat.S_IMODE(st.st_mode),
        "uid": st.st_uid,
        "gid": st.st_gid,
    }
    assert s["linux"]["resources"]["devices"] == [
        *default_rules,
        {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rw"},
    ]


def test_device_permissions_default_and_order() -> None:
    s = spec()
    apply_devices(s, [api_pb2.Device(host_path="/dev/zero", permissions="mwr")], privileged=False)
    assert s["linux"]["devices"][0]["path"] == "/dev/zero"  # container path defaults to host
    assert rule_for(s, 1, 5)[-1]["access"] == "rwm"
    s = spec()
    apply_devices(s, [api_pb2.Device(host_path="/dev/zero")], privileged=False)
    assert rule_for(s, 1, 5)[-1]["access"] == "rwm"


def test_device_through_a_symlink(tmp_path: Path) -> None:
    (tmp_path / "n").symlink_to("/dev/null")
    s = spec()
    apply_devices(
        s,
        [api_pb2.Device(host_path=str(tmp_path / "n"), container_path="/dev/n")],
        privileged=False,
    )
    assert s["linux"]["devices"][0]["major"] == 1 and s["linux"]["devices"][0]["minor"] == 3


@pytest.mark.parametrize(
    ("device", "message"),
    [
        (api_pb2.Device(host_path="/dev/null", permissions="rwx"), "permissions"),
        (api_pb2.Device(host_path="/dev/does-not-exist"), "No such file"),
        (api_pb2.Device(host_path="/etc/passwd"), "not a character or block"),
        (api_pb2.Device(host_path="dev/null"), "absolute"),
        (api_pb2.Device(host_path="/dev/null", container_path="null"), "absolute"),
    ],
)
def test_bad_devices(device: api_pb2.Device, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        apply_devices(spec(), [device], privileged=False)


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod needs root")
def test_device_directory_gives_every_device_under_it(tmp_path: Path) -> None:
    d = tmp_path / "devs"
    (d / "sub").mkdir(parents=True)
    os.mknod(d / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(d / "sub" / "zero", 0o600 | stat.S_IFCHR, os.makedev(1, 5))
    os.chmod(d / "null", 0o666)  # mknod's mode is under the umask
    (d / "file").write_text("")
    s = spec()
    apply_devices(s, [api_pb2.Device(host_path=str(d), container_path="/dev/x")], privileged=False)
    got = {(e["path"], e["major"], e["minor"], e["fileMode"]) for e in s["linux"]["devices"]}
    assert got == {("/dev/x/null", 1, 3, 0o666), ("/dev/x/sub/zero", 1, 5, 0o600)}


def test_privileged_gets_every_host_device() -> None:
    s = spec()
    apply_devices(
        s, [api_pb2.Device(host_path="/dev/null", container_path="/dev/mine")], privileged=True
    )
    paths = {e["path"] for e in s["linux"]["devices"]}
    assert {"/dev/mine", "/dev/null", "/dev/zero"} <= paths
    assert not any(p.startswith(("/dev/pts/", "/dev/shm/")) for p in paths)
    assert "/dev/console" not in paths
    assert len(paths) == len(s["linux"]["devices"])
    assert s["linux"]["resources"]["devices"] == [{"allow": True, "access": "rwm"}]
