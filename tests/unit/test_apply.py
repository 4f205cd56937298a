"""The layer applier: tar semantics, OCI whiteouts (native and overlay), and hostile layers."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import struct
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from linerd.diff.apply import OVERLAY_OPAQUE_XATTR, apply_staged, apply_tar, stage_tar
from linerd.errdefs import InvalidArgument

pytestmark = [
    pytest.mark.unit,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mknod, chown, trusted xattrs)"),
]

T0 = 1_600_000_000
CAP_NET_BIND = struct.pack("<IIIII", 0x02000001, 1 << 10, 0, 0, 0)  # vfs cap v2


# --- building layers ----------------------------------------------------------------------


@dataclass
class E:
    """One tar entry to build."""

    name: str
    kind: str = "file"  # file dir symlink hardlink chr blk fifo
    data: bytes = b""
    mode: int | None = None
    uid: int = 0
    gid: int = 0
    mtime: float = T0
    link: str = ""
    dev: tuple[int, int] = (0, 0)
    xattrs: dict[str, bytes] = field(default_factory=dict)


_TYPES = {
    "file": tarfile.REGTYPE,
    "dir": tarfile.DIRTYPE,
    "symlink": tarfile.SYMTYPE,
    "hardlink": tarfile.LNKTYPE,
    "chr": tarfile.CHRTYPE,
    "blk": tarfile.BLKTYPE,
    "fifo": tarfile.FIFOTYPE,
}


def layer(entries: Sequence[E], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for e in entries:
            info = tarfile.TarInfo(e.name)
            info.type = _TYPES[e.kind]
            info.mode = e.mode if e.mode is not None else (0o755 if e.kind == "dir" else 0o644)
            info.uid, info.gid = e.uid, e.gid
            info.mtime = e.mtime
            info.linkname = e.link
            info.devmajor, info.devminor = e.dev
            if e.xattrs:
                info.pax_headers = {
                    "SCHILY.xattr." + k: v.decode("utf-8", "surrogateescape")
                    for k, v in e.xattrs.items()
                }
            if e.kind == "file":
                info.size = len(e.data)
                tar.addfile(info, io.BytesIO(e.data))
            else:
                tar.addfile(info)
    return buf.getvalue()


def apply(
    data: bytes, target: Path, *, overlay: bool = False, parents: Sequence[Path] = ()
) -> None:
    target.mkdir(parents=True, exist_ok=True)
    if not STAGED:
        apply_tar(io.BytesIO(data), target, overlay=overlay, parents=parents)
        return
    with tempfile.TemporaryDirectory(dir=target.parent, prefix="stage-") as staging:
        entries = stage_tar(io.BytesIO(data), Path(staging))
        apply_staged(entries, Path(staging), target, overlay=overlay, parents=parents)


STAGED = False


@pytest.fixture(autouse=True, params=[False, True], ids=["streamed", "staged"])
def _staged(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every test here runs twice: streaming into the target, and staged then applied."""
    global STAGED
    STAGED = request.param
    yield
    STAGED = False


# --- comparing trees ----------------------------------------------------------------------


def tree(root: Path, *, dir_mtimes: bool = True) -> dict[str, tuple[object, ...]]:
    """Everything observable about a tree, keyed by relative path (the root excluded)."""
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            st = os.lstat(path)
            kind = stat.S_IFMT(st.st_mode)
            xattrs = {
                k: os.getxattr(path, k, follow_symlinks=False)
                for k in sorted(os.listxattr(path, follow_symlinks=False))
                if not k.startswith("trusted.overlay.")
            }
            extra: object = None
            if stat.S_ISREG(kind):
                extra = (st.st_size, hashlib.sha256(path.read_bytes()).hexdigest())
            elif stat.S_ISLNK(kind):
                extra = os.readlink(path)
            elif stat.S_ISCHR(kind) or stat.S_ISBLK(kind):
                extra = st.st_rdev
            mtime = st.st_mtime_ns if dir_mtimes or not stat.S_ISDIR(kind) else None
            rel = str(path.relative_to(root))
            out[rel] = (kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, extra, mtime, xattrs)
    return out


Mounter = Callable[[Sequence[Path]], Path]


def copy_tree(src: Path, dst: Path) -> None:
    # cp -a keeps owners, modes, times, xattrs, devices and hard links: a native snapshot.
    subprocess.run(["cp", "-a", "--", f"{src}/.", str(dst)], check=True)


@pytest.fixture
def overlay_mount(tmp_path: Path) -> Iterator[Mounter]:
    mounted: list[Path] = []

    def mount(lowers: Sequence[Path]) -> Path:
        mnt = tmp_path / f"mnt{len(mounted)}"
        mnt.mkdir()
        opts = "lowerdir=" + ":".join(str(p) for p in lowers)
        r = subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(mnt)])
        if r.returncode != 0:
            pytest.skip("overlay mounts unavailable")
        mounted.append(mnt)
        return mnt

    try:
        yield mount
    finally:
        for mnt in reversed(mounted):
            subprocess.run(["umount", str(mnt)], check=True)


# --- the layers of the sequence tests -----------------------------------------------------

LONG_DIR = "d" * 90 + "/" + "e" * 90 + "/" + "f" * 90
LAYER1 = [
    E("etc", "dir"),
    E("etc/passwd", data=b"root:x:0:0\n"),
    E("etc/shadow", data=b"secret\n", mode=0o600, uid=0, gid=42),
    E("bin", "dir"),
    E("bin/tool", data=b"\x7fELF" + bytes(range(256)) * 64, mode=0o4755),
    E("bin/sgid", data=b"x", mode=0o2711, uid=1000, gid=1000),
    E("bin/link", "hardlink", link="bin/tool"),
    E("bin/sym", "symlink", link="tool", uid=5, gid=6),
    E("bin/abs", "symlink", link="/etc/passwd"),
    E("tmp", "dir", mode=0o1777),
    E("locked", "dir", mode=0o000),
    E("locked/inner", data=b"hidden", mode=0o000),
    E("dev", "dir"),
    E("dev/null", "chr", mode=0o666, dev=(1, 3)),
    E("dev/sda", "blk", mode=0o660, gid=6, dev=(8, 0)),
    E("dev/fifo", "fifo", mode=0o620),
    E("home", "dir"),
    E("home/user", "dir", mode=0o750, uid=1000, gid=1000, mtime=T0 + 5),
    E("home/user/.profile", data=b"export A=1\n", uid=1000, gid=1000, mtime=T0 + 7.25),
    E("xa", "dir", xattrs={"user.dir": b"on-dir", "trusted.t": b"tt"}),
    E("xa/f", data=b"x", xattrs={"user.foo": b"bar", "user.bin": b"\x00\xff\x01"}),
    E(
        "xa/cap",
        data=b"c",
        uid=1000,
        gid=1000,
        mode=0o755,
        xattrs={"security.capability": CAP_NET_BIND},
    ),
    E("d" * 90, "dir"),
    E("d" * 90 + "/" + "e" * 90, "dir"),
    E(LONG_DIR, "dir"),
    E(LONG_DIR + "/" + "g" * 120, data=b"long"),
    E("gone", "dir"),
    E("gone/a", data=b"a"),
    E("gone/sub", "dir"),
    E("gone/sub/b", data=b"b"),
    E("opq", "dir"),
    E("opq/old", data=b"old"),
    E("opq/olddir", "dir"),
    E("opq/olddir/x", data=b"x"),
    E("opq/keep", "dir"),
    E("opq/keep/lower", data=b"lower"),
    E("swap", data=b"a file"),
    E("swapdir", "dir"),
    E("swapdir/x", data=b"x"),
]
LAYER2 = [
    E("etc", "dir", mtime=T0 + 100),
    E("etc/.wh.shadow"),
    E("etc/passwd", data=b"root:x:0:0\nuser:x:1000:1000\n", mtime=T0 + 100),
    E(".wh.gone"),
    E("opq", "dir", mode=0o700, mtime=T0 + 100),
    E("opq/new", data=b"new"),
    E("opq/.wh..wh..opq"),
    E("opq/keep", "dir", mtime=T0 + 100),
    E("opq/keep/upper", data=b"upper"),
    E("swap", "dir", mtime=T0 + 100),
    E("swap/inside", data=b"now a dir"),
    E("swapdir", "symlink", link="swap"),
    E("bin", "dir"),
    E("bin/tool", data=b"new tool", mode=0o755),
    E("bin/sym", "symlink", link="link"),
    E("newdir", "dir", mtime=T0 + 200),
    E("newdir/.wh.ghost"),
    E(".wh.recreated"),
    E("recreated", "dir", mtime=T0 + 300),
    E("recreated/fresh", data=b"fresh"),
]
LAYER3 = [
    E("bin", "dir"),
    E("bin/link2", "hardlink", link="bin/link"),  # only in a lower layer: copied up
    E("etc", "dir", mtime=T0 + 100),
    E("etc/.wh.passwd"),
]
LAYER0 = [E("recreated", "dir"), E("recreated/stale", data=b"stale")]


def test_native_layer_sequence(tmp_path: Path) -> None:
    one = tmp_path / "one"
    apply(layer(LAYER0 + LAYER1), one)
    t1 = tree(one)
    assert t1["bin/tool"][1] == 0o4755
    assert t1["bin/sgid"][1:4] == (0o2711, 1000, 1000)
    assert t1["tmp"][1] == 0o1777
    assert t1["locked"][1] == 0o000
    assert t1["dev/null"][0] == stat.S_IFCHR and t1["dev/null"][4] == os.makedev(1, 3)
    assert t1["dev/sda"][0] == stat.S_IFBLK and t1["dev/fifo"][0] == stat.S_IFIFO
    assert t1["bin/sym"][2:5] == (5, 6, "tool")
    assert os.stat(one / "bin/link").st_ino == os.stat(one / "bin/tool").st_ino
    assert t1["home/user/.profile"][5] == (T0 + 7) * 10**9 + 250_000_000
    assert t1["home/user"][5] == (T0 + 5) * 10**9
    assert t1["xa/f"][6] == {"user.bin": b"\x00\xff\x01", "user.foo": b"bar"}
    assert t1["xa"][6] == {"trusted.t": b"tt", "user.dir": b"on-dir"}
    assert t1["xa/cap"][6] == {"security.capability": CAP_NET_BIND}
    assert (one / LONG_DIR / ("g" * 120)).read_bytes() == b"long"

    two = tmp_path / "two"
    two.mkdir()
    copy_tree(one, two)
    apply(layer(LAYER2), two)
    t2 = tree(two)
    assert "etc/shadow" not in t2 and "gone" not in t2 and "gone/a" not in t2
    assert not any(k.startswith(".wh.") or "/.wh." in k for k in t2)
    assert sorted(k for k in t2 if k.startswith("opq/")) == [
        "opq/keep",
        "opq/keep/upper",
        "opq/new",
    ]
    assert t2["opq"][1] == 0o700 and t2["opq"][5] == (T0 + 100) * 10**9
    assert t2["swap"][0] == stat.S_IFDIR and (two / "swap/inside").read_bytes() == b"now a dir"
    assert t2["swapdir"][0] == stat.S_IFLNK
    # the old hard link keeps the old content: a replaced file is a new inode
    assert (two / "bin/link").read_bytes().startswith(b"\x7fELF")
    assert (two / "bin/tool").read_bytes() == b"new tool"
    assert sorted(k for k in t2 if k.startswith("recreated")) == ["recreated", "recreated/fresh"]
    assert "newdir" in t2 and t2["newdir"][5] == (T0 + 200) * 10**9
    assert t2["etc"][5] == (T0 + 100) * 10**9  # set after the whiteout changed it


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])
def test_matches_gnu_tar(tmp_path: Path, fmt: int) -> None:
    entries = [e for e in LAYER0 + LAYER1 if fmt == tarfile.PAX_FORMAT or not e.xattrs]
    if fmt == tarfile.GNU_FORMAT:  # no sub-second mtimes in GNU headers
        entries = [E(**{**e.__dict__, "mtime": int(e.mtime)}) for e in entries]
    data = layer(entries, fmt)
    ours, gnu = tmp_path / "ours", tmp_path / "gnu"
    apply(data, ours)
    gnu.mkdir()
    subprocess.run(
        ["tar", "--xattrs", "--xattrs-include=*", "--numeric-owner", "-xpf", "-", "-C", str(gnu)],
        input=data,
        check=True,
    )
    mine, theirs = tree(ours), tree(gnu)
    # GNU tar sets xattrs before chown, and chown clears security.capability: ours is right.
    if "xa/cap" in theirs:
        theirs["xa/cap"][6].pop("security.capability", None)  # type: ignore[attr-defined]
        mine["xa/cap"][6].pop("security.capability", None)  # type: ignore[attr-defined]
    assert mine == theirs


def test_overlay_layers_match_native(tmp_path: Path, overlay_mount: Mounter) -> None:
    layers = [layer(LAYER0 + LAYER1), layer(LAYER2), layer(LAYER3)]
    native = tmp_path / "native"
    native.mkdir()
    uppers: list[Path] = []
    for i, data in enumerate(layers):
        apply(data, native)
        up = tmp_path / f"up{i}"
        apply(data, up, overlay=True, parents=list(reversed(uppers)))
        uppers.append(up)

    up1 = tmp_path / "up1"
    shadow = os.lstat(up1 / "etc/shadow")
    assert stat.S_ISCHR(shadow.st_mode) and shadow.st_rdev == 0
    assert os.getxattr(up1 / "opq", OVERLAY_OPAQUE_XATTR) == b"y"
    assert os.getxattr(up1 / "recreated", OVERLAY_OPAQUE_XATTR) == b"y"
    assert not list(up1.rglob(".wh.*"))
    up2 = tmp_path / "up2"
    # the hard link's source lived only below: it was copied up, with its metadata
    assert os.stat(up2 / "bin/link").st_ino == os.stat(up2 / "bin/link2").st_ino
    assert stat.S_IMODE(os.stat(up2 / "bin/link").st_mode) == 0o4755

    merged = overlay_mount(list(reversed(uppers)))
    assert tree(merged) == tree(native)


def test_overlay_implicit_parent_copies_lower_metadata(tmp_path: Path) -> None:
    low, up = tmp_path / "low", tmp_path / "up"
    a = E("a", "dir", mode=0o710, uid=7, gid=8, mtime=T0 + 1, xattrs={"user.k": b"v"})
    apply(layer([a, E("a/x", data=b"x")]), low)
    apply(
        layer([E("a/.wh.x"), E("a/.wh.nothing"), E("a/b", data=b"b")]),
        up,
        overlay=True,
        parents=[low],
    )
    st = os.lstat(up / "a")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o710, 7, 8)
    assert st.st_mtime_ns == (T0 + 1) * 10**9
    assert os.getxattr(up / "a", "user.k") == b"v"
    assert stat.S_ISCHR(os.lstat(up / "a/x").st_mode)
    assert not os.path.lexists(up / "a/nothing")  # nothing below to hide: no whiteout


def test_root_entry_sets_root_metadata(tmp_path: Path) -> None:
    root = tmp_path / "r"
    apply(layer([E("./", "dir", mode=0o750, uid=3, gid=4, mtime=T0), E("./f", data=b"f")]), root)
    st = os.stat(root)
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime_ns) == (
        0o750,
        3,
        4,
        T0 * 10**9,
    )


def test_whiteout_does_not_hide_same_layer_entry(tmp_path: Path) -> None:
    root = tmp_path / "r"
    apply(layer([E("a", data=b"mine"), E(".wh.a")]), root)
    assert (root / "a").read_bytes() == b"mine"


def test_native_whiteout_in_missing_dir_is_noop(tmp_path: Path) -> None:
    root = tmp_path / "r"
    apply(layer([E("nodir/.wh.x"), E("nodir2/.wh..wh..opq")]), root)
    assert list(root.iterdir()) == []


def test_aufs_metadata_entries_skipped(tmp_path: Path) -> None:
    root = tmp_path / "r"
    apply(layer([E(".wh..wh.plnk", "dir"), E(".wh..wh.aufs", data=b"")]), root)
    assert list(root.iterdir()) == []


def test_trusted_overlay_xattrs_from_layer_dropped(tmp_path: Path) -> None:
    root = tmp_path / "r"
    apply(layer([E("d", "dir", xattrs={"trusted.overlay.redirect": b"/x", "user.a": b"1"})]), root)
    assert os.listxattr(root / "d") == ["user.a"]


def test_empty_stream_and_empty_tar(tmp_path: Path) -> None:
    root = tmp_path / "r"
    apply(b"", root)
    apply(b"\0" * 1024, root)
    assert list(root.iterdir()) == []


@pytest.mark.parametrize("junk", [b"not a tar" * 100, b"\x01" * 512])
def test_garbage_is_invalid_argument(tmp_path: Path, junk: bytes) -> None:
    with pytest.raises(InvalidArgument):
        apply(junk, tmp_path / "r")


def test_truncated_tar(tmp_path: Path) -> None:
    data = layer([E("big", data=b"x" * 100_000)])
    with pytest.raises(InvalidArgument):
        apply(data[:50_000], tmp_path / "r")


# --- hostile layers -------------------------------------------------------------------------


@pytest.fixture
def arena(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A target dir and a sibling "outside" dir whose contents must never change."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "passwd").write_bytes(b"precious")
    (outside / "shadow").write_bytes(b"secret")
    (outside / "sub").mkdir()
    os.chmod(outside / "sub", 0o755)
    os.utime(outside / "passwd", (T0, T0))
    target = tmp_path / "target"
    target.mkdir()
    before = tree(outside)
    siblings = sorted(p.name for p in tmp_path.iterdir())
    parent_before = sorted(p.name for p in tmp_path.parent.iterdir())
    yield target, outside
    assert tree(outside) == before
    assert os.stat(outside / "passwd").st_nlink == 1
    assert os.stat(outside).st_mode & 0o7777 == 0o755
    assert sorted(p.name for p in tmp_path.iterdir()) == siblings
    assert sorted(p.name for p in tmp_path.parent.iterdir()) == parent_before


def hostile_cases(outside: Path) -> dict[str, list[E]]:
    o = str(outside)
    return {
        "dotdot": [E("../outside/passwd", data=b"pwned")],
        "dotdot-new": [E("../x", data=b"pwned")],
        "abs-dotdot": [E("/../../outside/passwd", data=b"pwned")],
        "inner-dotdot": [E("a/../../outside/passwd", data=b"pwned")],
        "abs-symlink-parent": [E("evil", "symlink", link=o), E("evil/passwd", data=b"pwned")],
        "rel-symlink-parent": [E("up", "symlink", link="../outside"), E("up/passwd", data=b"x")],
        "rel-symlink-up2": [E("up", "symlink", link="../.."), E("up/x", data=b"x")],
        "symlink-deep": [E("d", "dir"), E("d/s", "symlink", link=o), E("d/s/sub/f", data=b"x")],
        "hardlink-dotdot": [E("h", "hardlink", link="../outside/passwd")],
        "hardlink-dotdot-deep": [E("h", "hardlink", link="../../outside/passwd")],
        "hardlink-abs": [E("h", "hardlink", link=o + "/passwd")],
        "hardlink-via-symlink": [E("s", "symlink", link=o), E("h", "hardlink", link="s/passwd")],
        "whiteout-dotdot": [E(".wh..."), E("x", data=b"x")],
        "whiteout-dot": [E(".wh..")],
        "whiteout-dot-sub": [E("a", "dir"), E("a/.wh..")],
        "whiteout-empty": [E(".wh.")],
        "whiteout-via-symlink": [E("s", "symlink", link=o), E("s/.wh.passwd")],
        "opaque-via-symlink": [E("s", "symlink", link=o), E("s/.wh..wh..opq")],
        "chmod-via-symlink": [E("s", "symlink", link=o), E("s/sub", "dir", mode=0o777, uid=9)],
        "dir-via-symlink": [E("s", "symlink", link=o), E("s/new", "dir")],
        "device-via-symlink": [E("s", "symlink", link=o), E("s/null", "chr", dev=(1, 3))],
        "symlink-via-symlink": [E("s", "symlink", link=o), E("s/passwd", "symlink", link="/")],
        "file-as-parent": [E("f", data=b"f"), E("f/x", data=b"x")],
        "root-as-file": [E("./", data=b"x")],
    }


HOSTILE = list(hostile_cases(Path("/x")))


@pytest.mark.parametrize("overlay", [False, True], ids=["native", "overlay"])
@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_refused(arena: tuple[Path, Path], case: str, overlay: bool) -> None:
    target, outside = arena
    with pytest.raises(InvalidArgument, match=r'^layer entry "|^malformed|^not a tar') as exc:
        apply(layer(hostile_cases(outside)[case]), target, overlay=overlay)
    assert "layer entry" in str(exc.value)


def test_hostile_message(arena: tuple[Path, Path]) -> None:
    target, outside = arena
    with pytest.raises(InvalidArgument, match=r'^layer entry "\.\./x": path escapes the root$'):
        apply(layer([E("../x", data=b"x")]), target)
    with pytest.raises(InvalidArgument, match=r"goes through a symlink \(evil\)"):
        apply(layer([E("evil", "symlink", link=str(outside)), E("evil/passwd")]), target)


@pytest.mark.parametrize("overlay", [False, True], ids=["native", "overlay"])
def test_final_symlink_is_replaced_not_followed(arena: tuple[Path, Path], overlay: bool) -> None:
    target, outside = arena
    o = str(outside)
    apply(
        layer(
            [
                E("x", "symlink", link=o + "/shadow"),
                E("x", data=b"replaced", mode=0o777),
                E("d", "symlink", link=o),
                E("d", "dir", mode=0o700, uid=9),  # replaces the symlink, never chmods outside
                E("h", "symlink", link=o + "/passwd"),
                E("hl", "hardlink", link="h"),  # links the symlink itself
                E("hl", data=b"over the link"),
                E("n", "symlink", link=o + "/sub"),
                E("n", "fifo"),
                E("y", "symlink", link=o + "/passwd"),
                E("y", "symlink", link="elsewhere", uid=4),  # lchown, not chown
            ]
        ),
        target,
        overlay=overlay,
    )
    assert (target / "x").read_bytes() == b"replaced" and not (target / "x").is_symlink()
    assert (target / "d").is_dir() and not (target / "d").is_symlink()
    assert os.readlink(target / "h") == o + "/passwd"
    assert (target / "hl").read_bytes() == b"over the link"
    assert stat.S_ISFIFO(os.lstat(target / "n").st_mode)
    assert os.lstat(target / "y").st_uid == 4


def test_symlink_target_inside_later_dir_entry(arena: tuple[Path, Path]) -> None:
    # a symlink to a directory, then a later dir entry of the same name: merge would follow it
    target, outside = arena
    apply(layer([E("a", "symlink", link=str(outside)), E("a", "dir"), E("a/f", data=b"f")]), target)
    assert (target / "a/f").read_bytes() == b"f"


def test_whiteout_of_symlink_removes_link_only(arena: tuple[Path, Path]) -> None:
    target, outside = arena
    apply(layer([E("s", "symlink", link=str(outside))]), target)
    apply(layer([E(".wh.s")]), target)
    assert not os.path.lexists(target / "s")


def test_native_dir_replaced_by_symlink_then_child(arena: tuple[Path, Path]) -> None:
    # a cached fd of the replaced dir must not be reused for a later child entry
    target, outside = arena
    entries = [E("a", "dir"), E("a/f", data=b"f"), E("a", "symlink", link=str(outside)), E("a/g")]
    with pytest.raises(InvalidArgument, match="symlink"):
        apply(layer(entries), target)


def test_a_file_replaces_a_directory_and_a_whiteout(tmp_path: Path) -> None:
    lower = tmp_path / "lower"
    apply(layer([E("d", "dir"), E("d/inner", data=b"x"), E("w", data=b"w")]), lower)
    upper = tmp_path / "upper"
    # a file over a lower directory, and over this layer's whiteout
    entries = [E(".wh.w"), E("w", data=b"back"), E("d", data=b"now a file")]
    apply(layer(entries), upper, overlay=True, parents=[lower])
    assert (upper / "w").read_bytes() == b"back"
    assert (upper / "d").read_bytes() == b"now a file"
    # a file over this layer's own (non-empty) directory
    same = tmp_path / "same"
    apply(layer([E("e", "dir"), E("e/in", data=b"i"), E("e", data=b"file")]), same)
    assert (same / "e").read_bytes() == b"file"
