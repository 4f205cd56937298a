"""linerd.cri.users: an image's /etc/passwd and /etc/group, read inside its rootfs only."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from linerd.cri import users
from linerd.cri.users import ImageUsers, parse_group, parse_passwd, read_in_root
from linerd.errdefs import InvalidArgument

pytestmark = pytest.mark.unit

PASSWD = """\
root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
# a comment
www-data:x:33:33:www-data:/var/www:/usr/sbin/nologin
user:x:1000:1000::/home/user:/bin/sh
broken:x:abc:1:::
short:x:5
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
"""
GROUP = """\
root:x:0:
daemon:x:1:
www-data:x:33:
user:x:1000:user
audio:x:29:user,www-data
extra:x:50000:user
staff:x:50:
nogroup:x:65534:
bad:x:x:user
"""

# The host files a hostile image tries to make linerd read.
HOST_PASSWD = "root:x:0:0:host:/root:/bin/sh\nhostonly:x:4242:4242::/:/bin/sh\n"


def make_rootfs(tmp_path: Path, passwd: str | None = PASSWD, group: str | None = GROUP) -> Path:
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    if passwd is not None:
        (root / "etc" / "passwd").write_text(passwd)
    if group is not None:
        (root / "etc" / "group").write_text(group)
    return root


@pytest.fixture
def host_file(tmp_path: Path) -> Path:
    outside = tmp_path / "host" / "passwd"
    outside.parent.mkdir()
    outside.write_text(HOST_PASSWD)
    return outside


def test_parse_skips_malformed_lines_instead_of_reading_uid_0() -> None:
    names = [e.name for e in parse_passwd(PASSWD.encode())]
    assert names == ["root", "daemon", "www-data", "user", "nobody"]
    groups = {g.name: g for g in parse_group(GROUP.encode())}
    assert "bad" not in groups
    assert groups["audio"].members == ("user", "www-data")
    assert groups["root"].members == ()


def test_resolve_forms(tmp_path: Path) -> None:
    db = ImageUsers(make_rootfs(tmp_path))
    assert db.resolve("user") == (1000, 1000)
    assert db.resolve("1000") == (1000, 1000)  # gid from the uid's passwd entry
    assert db.resolve("1001") == (1001, 0)  # no entry: gid 0, as containerd
    assert db.resolve("user:staff") == (1000, 50)
    assert db.resolve("www-data:1234") == (33, 1234)
    assert db.resolve("1000:33") == (1000, 33)  # the given group replaces the user's
    assert db.resolve("4321:staff") == (4321, 50)


@pytest.mark.parametrize("bad", ["ghost", "ghost:staff", "user:ghosts", "a:b:c", "1000:", ":50"])
def test_resolve_refuses_unknown_names_and_bad_forms(tmp_path: Path, bad: str) -> None:
    with pytest.raises(InvalidArgument):
        ImageUsers(make_rootfs(tmp_path)).resolve(bad)


def test_resolve_refuses_ids_out_of_range(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="out of range"):
        ImageUsers(make_rootfs(tmp_path)).resolve("4294967295")


def test_without_databases_only_numbers_work(tmp_path: Path) -> None:
    db = ImageUsers(make_rootfs(tmp_path, passwd=None, group=None))
    assert db.resolve("1000") == (1000, 0)
    assert db.resolve("1000:50") == (1000, 50)
    assert db.member_gids("1000") == []
    with pytest.raises(InvalidArgument, match="no /etc/passwd"):
        db.resolve("user")
    with pytest.raises(InvalidArgument, match="no /etc/group"):
        db.resolve("1000:staff")


def test_member_gids_by_name_or_uid_without_the_own_group(tmp_path: Path) -> None:
    db = ImageUsers(make_rootfs(tmp_path))
    # `user` is listed in its own group `user` (left out: that is the primary group).
    assert db.member_gids("user") == [29, 50000]
    assert db.member_gids("1000") == [29, 50000]
    assert db.member_gids("www-data") == [29]
    assert db.member_gids("4321") == []
    assert db.member_gids("0") == []


def test_links_inside_the_rootfs_are_followed_there(tmp_path: Path) -> None:
    root = make_rootfs(tmp_path, passwd=None)
    (root / "usr" / "lib").mkdir(parents=True)
    (root / "usr" / "lib" / "passwd").write_text(PASSWD)
    (root / "etc" / "passwd").symlink_to("../usr/lib/passwd")
    assert ImageUsers(root).resolve("user") == (1000, 1000)
    (root / "etc" / "passwd").unlink()
    (root / "etc" / "passwd").symlink_to("/usr/lib/passwd")  # absolute: from the rootfs
    assert ImageUsers(root).resolve("www-data") == (33, 33)


def test_absolute_link_to_a_host_file_is_not_followed_out(tmp_path: Path, host_file: Path) -> None:
    root = make_rootfs(tmp_path, passwd=None)
    (root / "etc" / "passwd").symlink_to(host_file)
    assert read_in_root(root, "/etc/passwd") is None  # <root>/<host path> does not exist
    with pytest.raises(InvalidArgument, match=r"not found|no /etc/passwd"):
        ImageUsers(root).resolve("hostonly")


def test_group_linked_to_a_host_file_gives_no_groups(tmp_path: Path) -> None:
    host_group = tmp_path / "host-group"
    host_group.write_text("wheel:x:10:user\n")
    root = make_rootfs(tmp_path, group=None)
    (root / "etc" / "group").symlink_to(host_group)
    db = ImageUsers(root)
    assert db.member_gids("user") == []
    with pytest.raises(InvalidArgument, match="no /etc/group"):
        db.resolve("user:wheel")


def test_dotdot_link_stops_at_the_rootfs(tmp_path: Path, host_file: Path) -> None:
    root = make_rootfs(tmp_path, passwd=None)
    climb = "../" * (len(root.parts) + 3)
    (root / "etc" / "passwd").symlink_to(climb + str(host_file).lstrip("/"))
    assert read_in_root(root, "/etc/passwd") is None
    # The same target inside the rootfs is what it reads.
    inner = root / str(host_file).lstrip("/")
    inner.parent.mkdir(parents=True)
    inner.write_text(PASSWD)
    assert ImageUsers(root).resolve("user") == (1000, 1000)


def test_linked_etc_directory_is_resolved_in_the_rootfs(tmp_path: Path, host_file: Path) -> None:
    root = tmp_path / "rootfs"
    root.mkdir()
    (root / "etc").symlink_to(host_file.parent)  # /etc -> the host's directory
    assert read_in_root(root, "/etc/passwd") is None
    with pytest.raises(InvalidArgument):
        ImageUsers(root).resolve("hostonly")
    # A relative /etc link to a directory inside works.
    (root / "etc").unlink()
    (root / "real-etc").mkdir()
    (root / "real-etc" / "passwd").write_text(PASSWD)
    (root / "etc").symlink_to("real-etc")
    assert ImageUsers(root).resolve("user") == (1000, 1000)


def test_dotdot_in_the_path_does_not_leave_the_rootfs(tmp_path: Path, host_file: Path) -> None:
    root = make_rootfs(tmp_path)
    assert read_in_root(root, "/../../../../" + str(host_file)) is None


def test_symlink_loop_is_refused(tmp_path: Path) -> None:
    root = make_rootfs(tmp_path, passwd=None)
    (root / "etc" / "passwd").symlink_to("passwd2")
    (root / "etc" / "passwd2").symlink_to("passwd")
    with pytest.raises(InvalidArgument, match="symbolic links"):
        read_in_root(root, "/etc/passwd")


def test_fifo_directory_and_huge_files_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = make_rootfs(tmp_path, passwd=None, group=None)
    os.mkfifo(root / "etc" / "passwd")  # must not hang
    with pytest.raises(InvalidArgument, match="not a regular file"):
        ImageUsers(root).resolve("user")
    (root / "etc" / "group").mkdir()
    with pytest.raises(InvalidArgument, match="not a regular file"):
        ImageUsers(root).resolve("1000:staff")
    (root / "etc" / "passwd").unlink()
    (root / "etc" / "passwd").write_text(PASSWD)
    monkeypatch.setattr(users, "MAX_DB_BYTES", 64)
    with pytest.raises(InvalidArgument, match="over 64 bytes"):
        read_in_root(root, "/etc/passwd", users.MAX_DB_BYTES)


def test_missing_and_non_directory_parents_read_as_absent(tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    root.mkdir()
    assert read_in_root(root, "/etc/passwd") is None
    (root / "etc").write_text("not a dir")
    assert read_in_root(root, "/etc/passwd") is None
    assert read_in_root(root, "/") is None
