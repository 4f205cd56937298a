from __future__ import annotations

from pathlib import Path

import pytest

from liner_common import ocispec as oci
from liner_common.errors import InvalidArgument, NotFound

pytestmark = pytest.mark.unit


def test_defaults_are_containerds() -> None:
    s = oci.generate("default", "c1", [])
    assert s["linux"]["cgroupsPath"] == "/default/c1"
    assert s["process"]["noNewPrivileges"] is True
    assert len(s["process"]["capabilities"]["bounding"]) == 14
    assert "CAP_SYS_ADMIN" not in s["process"]["capabilities"]["effective"]
    assert "/proc/kcore" in s["linux"]["maskedPaths"]
    assert "/proc/sys" in s["linux"]["readonlyPaths"]
    assert {m["destination"] for m in s["mounts"]} >= {"/proc", "/dev", "/sys", "/dev/pts"}
    assert s["process"]["rlimits"] == [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}]
    assert s["linux"]["resources"]["devices"][0] == {"allow": False, "access": "rwm"}


def test_image_config_then_overrides() -> None:
    config = {
        "Entrypoint": ["/bin/sh", "-c"],
        "Cmd": ["echo hi"],
        "Env": ["A=1", "PATH=/x"],
        "WorkingDir": "/srv/../app",
    }
    s = oci.generate(
        "ns",
        "c",
        [
            oci.with_image_config(config),
            oci.with_env(["A=2", "B=3"]),
            oci.with_memory_limit(64 << 20),
            oci.with_cpus(0.5),
            oci.with_pids_limit(20),
        ],
    )
    assert s["process"]["args"] == ["/bin/sh", "-c", "echo hi"]
    assert s["process"]["env"] == ["PATH=/x", "A=2", "B=3"]
    assert s["process"]["cwd"] == "/app"
    assert s["linux"]["resources"]["memory"]["limit"] == 64 << 20
    assert s["linux"]["resources"]["cpu"] == {"quota": 50000, "period": 100000}
    assert s["linux"]["resources"]["pids"] == {"limit": 20}
    assert oci.generate("ns", "c", [oci.with_image_config(config), oci.with_args(["ls"])])[
        "process"
    ]["args"] == ["ls"]


@pytest.mark.parametrize("workdir", ["../../etc", "/../../..", "a/../../b"])
def test_workdir_cannot_climb_out(workdir: str) -> None:
    cwd = oci.clean_workdir(workdir)
    assert cwd.startswith("/") and ".." not in cwd


@pytest.mark.parametrize("env", [["NOEQUALS"], ["=x"], ["A=\0b"]])
def test_bad_env_is_refused(env: list[str]) -> None:
    with pytest.raises(InvalidArgument):
        oci.generate("ns", "c", [oci.with_env(env)])


def test_users_resolve_in_the_rootfs(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/h:/bin/sh\n")
    (tmp_path / "etc/group").write_text("root:x:0:\napp:x:1001:\nextra:x:2000:app,other\n")
    assert oci.resolve_user("app", tmp_path) == {
        "uid": 1000,
        "gid": 1001,
        "additionalGids": [1001, 2000],
    }
    assert oci.resolve_user("1000:5", tmp_path)["gid"] == 5
    assert oci.resolve_user("app:extra", tmp_path)["gid"] == 2000
    assert oci.resolve_user("42", tmp_path) == {"uid": 42, "gid": 0, "additionalGids": [0]}
    with pytest.raises(NotFound):
        oci.resolve_user("nobody-here", tmp_path)
    with pytest.raises(NotFound):
        oci.resolve_user("app:nogroup", tmp_path)


def test_symlinks_out_of_the_rootfs_are_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "host"
    (outside / "etc").mkdir(parents=True)
    (outside / "etc/passwd").write_text("evil:x:0:0::/:/bin/sh\n")
    linked_file, linked_dir = tmp_path / "a", tmp_path / "b"
    (linked_file / "etc").mkdir(parents=True)
    (linked_file / "etc/passwd").symlink_to(outside / "etc/passwd")
    linked_dir.mkdir()
    (linked_dir / "etc").symlink_to(outside / "etc")
    for rootfs in (linked_file, linked_dir):
        with pytest.raises(NotFound):
            oci.resolve_user("evil", rootfs)


def test_symlinks_inside_the_rootfs_are_followed(tmp_path: Path) -> None:
    (tmp_path / "usr/lib").mkdir(parents=True)
    (tmp_path / "usr/lib/passwd").write_text("app:x:1000:1001::/h:/bin/sh\n")
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/passwd").symlink_to("../usr/lib/passwd")
    assert oci.resolve_user("app", tmp_path)["uid"] == 1000


def test_privileged_and_host_network() -> None:
    s = oci.generate(
        "ns",
        "c",
        [oci.with_privileged, oci.with_host_network, oci.with_readonly_rootfs, oci.with_tty],
    )
    assert "CAP_SYS_ADMIN" in s["process"]["capabilities"]["bounding"]
    assert s["linux"]["maskedPaths"] == []
    assert "network" not in {n["type"] for n in s["linux"]["namespaces"]}
    assert s["root"]["readonly"] is True and s["process"]["terminal"] is True
