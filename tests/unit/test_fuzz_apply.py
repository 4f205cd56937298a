"""Property tests of the layer applier (hypothesis).

Random layer sequences (files with random bytes, modes, owners and mtimes; directories incl.
0o000 and setuid/setgid/sticky modes; relative, absolute and dangling symlinks; hard links;
fifos; long names; whiteouts and opaque markers) are applied natively and compared with a
small pure-Python model of OCI layer semantics; the same layers applied in overlay mode and
mounted must show the same tree. Hostile names never reach outside the target, and
write_diff(lower, upper) applied on a copy of lower reproduces upper.
"""

from __future__ import annotations

import copy
import io
import os
import stat
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, example, given, note, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from linerd.diff.apply import apply_staged, apply_tar, clean_name, stage_tar
from linerd.diff.compare import write_diff
from linerd.errdefs import InvalidArgument

pytestmark = [
    pytest.mark.unit,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chown, setuid modes, mounts)"),
]

# Hypothesis caches (not examples: database=None) go to /tmp, never into the repository.
set_hypothesis_home_dir(os.path.join(tempfile.gettempdir(), "liner-hypothesis"))
FUZZ = settings(
    phases=[Phase.explicit, Phase.generate] if os.environ.get("NOSHRINK") else list(Phase),
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
T0 = 1_600_000_000
WH = ".wh."
OPAQUE = ".wh..wh..opq"


# --- tar entries ------------------------------------------------------------------------------


@dataclass(frozen=True)
class E:
    name: str
    kind: str = "file"  # file dir symlink hardlink fifo (whiteouts are files named .wh.*)
    data: bytes = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime: int = T0
    link: str = ""


_TYPES = {
    "file": tarfile.REGTYPE,
    "dir": tarfile.DIRTYPE,
    "symlink": tarfile.SYMTYPE,
    "hardlink": tarfile.LNKTYPE,
    "fifo": tarfile.FIFOTYPE,
}


def build(entries: Sequence[E], *, outside: str = "") -> bytes:
    """A PAX tar of `entries`; "@OUT" in names and link targets becomes `outside`."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for e in entries:
            info = tarfile.TarInfo(e.name.replace("@OUT", outside))
            info.type = _TYPES[e.kind]
            info.mode, info.uid, info.gid, info.mtime = e.mode, e.uid, e.gid, e.mtime
            info.linkname = e.link.replace("@OUT", outside)
            if e.kind == "file":
                info.size = len(e.data)
                tar.addfile(info, io.BytesIO(e.data))
            else:
                tar.addfile(info)
    return buf.getvalue()


def apply(data: bytes, target: Path, *, overlay: bool = False, parents: Sequence[Path] = ()):
    target.mkdir(exist_ok=True)
    apply_tar(io.BytesIO(data), target, overlay=overlay, parents=parents)


def apply_all(
    layers: Sequence[Sequence[E]], targets: Sequence[Path], *, overlay: bool, staged: bool
) -> None:
    """Apply each layer onto its target (all the same one natively; one upper per layer in
    overlay mode, each over the earlier ones). Staged: every layer is staged before the
    first is applied, as a pull stages layers whose parents are still unpacking."""
    if not staged:
        for i, (entries, target) in enumerate(zip(layers, targets, strict=True)):
            lowers = list(reversed(targets[:i])) if overlay else []
            apply(build(entries), target, overlay=overlay, parents=lowers)
        return
    stages = []
    for entries, target in zip(layers, targets, strict=True):
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix="stage-"))
        stages.append((stage_tar(io.BytesIO(build(entries)), staging), staging))
    for i, ((entries, staging), target) in enumerate(zip(stages, targets, strict=True)):
        target.mkdir(exist_ok=True)
        lowers = list(reversed(targets[:i])) if overlay else []
        apply_staged(entries, staging, target, overlay=overlay, parents=lowers)
        assert not os.listdir(staging), "every staged file is moved into place"


# --- the reference model ----------------------------------------------------------------------


@dataclass(eq=False)
class Node:
    """One inode; hard links are two paths holding the same Node."""

    kind: str
    mode: int
    uid: int
    gid: int
    data: bytes = b""
    link: str = ""
    mtime: int = T0


Tree = dict[str, Node]  # "a/b" -> node; the root ("") is implicit


def _join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def _ancestors(path: str) -> Iterator[str]:
    while "/" in path:
        path = path.rsplit("/", 1)[0]
        yield path


def _remove(tree: Tree, path: str) -> None:
    tree.pop(path, None)
    for p in [p for p in tree if p.startswith(path + "/")]:
        del tree[p]


class ModelLayer:
    """OCI layer semantics over a Tree, applied in entry order (the native applier's rules).

    A whiteout hides lower layers only: a path this layer wrote (or a directory it wrote
    into) is kept; an opaque directory keeps only what this layer wrote, at the layer's end.
    Missing parents are created 0755 root (gid inherited from a setgid parent, as mkdir does).
    """

    def __init__(self, tree: Tree) -> None:
        self.tree = tree
        self.touched: set[str] = {""}
        self.opaque: list[str] = []

    def _touch(self, path: str) -> None:
        self.touched.add(path)
        self.touched.update(_ancestors(path))

    def entry(self, e: E) -> None:
        tree = self.tree
        path = e.name
        parent, _, base = path.rpartition("/")
        if base == OPAQUE:
            self._touch(parent)
            if parent == "" or (parent in tree and tree[parent].kind == "dir"):
                self.opaque.append(parent)
            return
        if base.startswith(WH):
            victim = _join(parent, base[len(WH) :])
            if victim not in self.touched:
                _remove(tree, victim)
            return
        prefix = ""
        for comp in parent.split("/") if parent else []:
            up = prefix
            prefix = _join(prefix, comp)
            if prefix not in tree:
                setgid = up != "" and tree[up].mode & stat.S_ISGID
                tree[prefix] = Node("dir", 0o755, 0, tree[up].gid if setgid else 0)
        old = tree.get(path)
        if e.kind == "dir":
            if old is not None and old.kind == "dir":
                old.mode, old.uid, old.gid = e.mode, e.uid, e.gid
            else:
                _remove(tree, path)
                tree[path] = Node("dir", e.mode, e.uid, e.gid)
        elif e.kind == "hardlink":
            if e.link != path:
                src = tree[e.link]
                _remove(tree, path)
                tree[path] = src
        else:
            _remove(tree, path)
            tree[path] = Node(e.kind, e.mode, e.uid, e.gid, e.data, e.link, e.mtime)
        self._touch(path)

    def finish(self) -> None:
        for d in self.opaque:
            if d and (d not in self.tree or self.tree[d].kind != "dir"):
                continue
            under = [p for p in self.tree if (not d or p.startswith(d + "/"))]
            for p in under:
                if p in self.tree and p not in self.touched:
                    _remove(self.tree, p)


def model_apply(tree: Tree, layers: Sequence[Sequence[E]]) -> Tree:
    tree = copy.deepcopy(tree)  # keeps hard links shared
    for entries in layers:
        m = ModelLayer(tree)
        for e in entries:
            m.entry(e)
        m.finish()
    return tree


# --- observing trees --------------------------------------------------------------------------

View = dict[str, tuple[object, ...]]


def _facts(kind: str, mode: int, uid: int, gid: int, extra: object, mtime: int | None):
    return (kind, mode if kind != "symlink" else None, uid, gid, extra, mtime)


def model_view(tree: Tree) -> View:
    out: View = {}
    for path, n in tree.items():
        extra = n.data if n.kind == "file" else n.link if n.kind == "symlink" else None
        mtime = None if n.kind == "dir" else n.mtime * 1_000_000_000
        out[path] = _facts(n.kind, n.mode, n.uid, n.gid, extra, mtime)
    return out


def model_links(tree: Tree) -> set[frozenset[str]]:
    groups: dict[int, set[str]] = {}
    for path, n in tree.items():
        if n.kind != "dir":
            groups.setdefault(id(n), set()).add(path)
    return {frozenset(g) for g in groups.values() if len(g) > 1}


_KINDS = {stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFLNK: "symlink", stat.S_IFIFO: "fifo"}


def disk_view(root: Path, *, dir_mtimes: bool = False) -> View:
    out: View = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            st = os.lstat(path)
            kind = _KINDS.get(stat.S_IFMT(st.st_mode), "other")
            extra: object = None
            if kind == "file":
                extra = path.read_bytes()
            elif kind == "symlink":
                extra = os.readlink(path)
            mtime = st.st_mtime_ns if kind != "dir" or dir_mtimes else None
            rel = str(path.relative_to(root))
            out[rel] = _facts(kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, extra, mtime)
    return out


def disk_links(root: Path) -> set[frozenset[str]]:
    groups: dict[tuple[int, int], set[str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:  # a symlink to a directory is in dirnames
            path = Path(dirpath, name)
            st = os.lstat(path)
            if stat.S_ISDIR(st.st_mode):
                continue
            groups.setdefault((st.st_dev, st.st_ino), set()).add(str(path.relative_to(root)))
    return {frozenset(g) for g in groups.values() if len(g) > 1}


def snapshot(root: Path) -> dict[str, tuple[object, ...]]:
    """Everything about a sentinel tree, including inode numbers and link counts."""
    out = {}
    for path in [root, *sorted(root.rglob("*"))]:
        st = os.lstat(path)
        data = path.read_bytes() if stat.S_ISREG(st.st_mode) else None
        out[str(path)] = (st.st_mode, st.st_uid, st.st_gid, st.st_nlink, st.st_ino, data)
    return out


@contextmanager
def arena() -> Iterator[tuple[Path, Path]]:
    """`work/` for the trees and, next to it, `outside/`: a sentinel that must never change
    (a target's `../../outside` is the sentinel); nothing else may appear beside them."""
    with tempfile.TemporaryDirectory(prefix="liner-fuzz-") as tmp:
        work, outside = Path(tmp, "work"), Path(tmp, "outside")
        work.mkdir()
        (outside / "sub").mkdir(parents=True)
        (outside / "passwd").write_bytes(b"precious")
        before = snapshot(outside)
        try:
            yield work, outside
        finally:
            for mnt in work.glob("mnt*"):
                if os.path.ismount(mnt):
                    subprocess.run(["umount", str(mnt)], check=True)
        assert snapshot(outside) == before
        assert sorted(os.listdir(tmp)) == ["outside", "work"]


def mount_overlay(base: Path, uppers: Sequence[Path]) -> Path | None:
    """Mount `uppers` (bottom first) read-only; an empty bottom layer makes two at least."""
    empty = base / "empty"
    empty.mkdir(exist_ok=True)
    mnt = base / f"mnt{len(list(base.glob('mnt*')))}"
    mnt.mkdir()
    lowers = ":".join(str(p) for p in [*reversed(uppers), empty])
    r = subprocess.run(
        ["mount", "-t", "overlay", "overlay", "-o", f"lowerdir={lowers}", str(mnt)],
        capture_output=True,
    )
    return mnt if r.returncode == 0 else None


def assert_same(got: View, want: View) -> None:
    """Equal views; on failure, only the paths that differ."""
    diff = {
        k: (got.get(k), want.get(k))
        for k in sorted(set(got) | set(want))
        if got.get(k) != want.get(k)
    }
    assert not diff, "path: (on disk, expected)\n" + "\n".join(f"{k}: {v}" for k, v in diff.items())


# --- strategies -------------------------------------------------------------------------------

short_names = st.text(alphabet="abcxyz019._-é ", min_size=1, max_size=10).filter(
    lambda s: s not in (".", "..") and not s.startswith(WH)
)
long_names = st.text(alphabet="lmnop", min_size=100, max_size=200)
names = st.one_of(short_names, short_names, short_names, long_names)
file_modes = st.sampled_from([0o644, 0o755, 0o600, 0o000, 0o4755, 0o2711, 0o6755, 0o1644, 0o777])
dir_modes = st.sampled_from([0o755, 0o700, 0o000, 0o1777, 0o2775, 0o555, 0o4711])
owners = st.sampled_from([0, 1, 42, 1000, 65534, 3_000_000])
mtimes = st.sampled_from([T0, T0 + 1, T0 + 86_400])
payloads = st.binary(max_size=300)


def draw_entry(data: st.DataObject, tree: Tree, *, root_opaque: bool = True) -> E:
    dirs = sorted(["", *(p for p, n in tree.items() if n.kind == "dir")])
    nondirs = sorted(p for p, n in tree.items() if n.kind != "dir")
    kind = data.draw(
        st.sampled_from(
            ["file", "file", "dir", "dir", "symlink", "hardlink", "fifo", "whiteout", "opaque"]
        )
    )
    parent = data.draw(st.sampled_from(dirs))
    if kind == "opaque" and (parent or root_opaque):
        return E(_join(parent, OPAQUE))
    children = sorted(p.rpartition("/")[2] for p in tree if p.rpartition("/")[0] == parent)
    if children and data.draw(st.booleans()):
        name = data.draw(st.sampled_from(children))
    else:
        name = data.draw(names)
        implicit = _join(parent, data.draw(names))
        if (
            data.draw(st.integers(0, 4)) == 0
            and tree.get(implicit, Node("dir", 0, 0, 0)).kind == "dir"
        ):
            parent = implicit  # a new directory, made implicitly (or an existing one)
    path = _join(parent, name)
    mode, uid, gid = data.draw(file_modes), data.draw(owners), data.draw(owners)
    mtime = data.draw(mtimes)
    if kind == "whiteout":
        return E(_join(parent, WH + name))
    if kind == "dir":
        return E(path, "dir", mode=data.draw(dir_modes), uid=uid, gid=gid, mtime=mtime)
    if kind == "symlink":
        up = "../" * path.count("/")
        link = data.draw(
            st.sampled_from(
                [
                    up + "../../outside/passwd",  # relative, to the sentinel
                    up + "../../outside",
                    "/",
                    "/nonexistent/dangling",
                    "dangling",
                    "../" * 8 + "etc",
                    *(up + p for p in nondirs[:3]),
                    *(up + p for p in dirs[1:4]),
                ]
            )
        )
        return E(path, "symlink", mode=0o777, uid=uid, gid=gid, mtime=mtime, link=link)
    if kind == "hardlink":
        # A hard link may replace anything but a directory holding its own source.
        sources = [s for s in nondirs if not s.startswith(path + "/")]
        if sources:
            return E(path, "hardlink", link=data.draw(st.sampled_from(sources)))
    if kind == "fifo":
        return E(path, "fifo", mode=mode, uid=uid, gid=gid, mtime=mtime)
    return E(path, "file", data.draw(payloads), mode, uid, gid, mtime)


def draw_layers(
    data: st.DataObject, count: int, max_entries: int = 10, *, root_opaque: bool = True
) -> list[list[E]]:
    tree: Tree = {}
    layers = []
    for _ in range(count):
        m = ModelLayer(tree)
        entries = []
        for _ in range(data.draw(st.integers(1, max_entries))):
            e = draw_entry(data, tree, root_opaque=root_opaque)
            entries.append(e)
            m.entry(e)
        m.finish()
        layers.append(entries)
    return layers


# --- properties -------------------------------------------------------------------------------


@pytest.mark.parametrize("staged", [False, True], ids=["streamed", "staged"])
@settings(FUZZ, max_examples=120)
@given(data=st.data())
def test_native_apply_matches_model(staged: bool, data: st.DataObject) -> None:
    layers = draw_layers(data, data.draw(st.integers(1, 3)))
    note(f"layers: {layers}")
    with arena() as (base, _):
        target = base / "target"
        apply_all(layers, [target] * len(layers), overlay=False, staged=staged)
        expected = model_apply({}, layers)
        assert_same(disk_view(target), model_view(expected))
        assert disk_links(target) == model_links(expected)


@pytest.mark.parametrize("staged", [False, True], ids=["streamed", "staged"])
@settings(FUZZ, max_examples=40)
@given(data=st.data())
def test_overlay_apply_matches_model(staged: bool, data: st.DataObject) -> None:
    # No opaque marker on the root: overlayfs ignores trusted.overlay.opaque on a layer's
    # root directory, so the merged view cannot hide the lower root (a known limitation).
    layers = draw_layers(data, data.draw(st.integers(1, 3)), root_opaque=False)
    note(f"layers: {layers}")
    with arena() as (base, _):
        uppers = [base / f"up{i}" for i in range(len(layers))]
        apply_all(layers, uppers, overlay=True, staged=staged)
        merged = mount_overlay(base, uppers)
        if merged is None:
            pytest.skip("overlay mounts unavailable")
        assert_same(disk_view(merged), model_view(model_apply({}, layers)))


@settings(FUZZ, max_examples=60)
@given(data=st.data())
def test_write_diff_round_trips(data: st.DataObject) -> None:
    first, second = draw_layers(data, 2)
    note(f"layers: {[first, second]}")
    with arena() as (base, _):
        lower, upper, result = base / "lower", base / "upper", base / "result"
        apply(build(first), lower)
        for copy_ in (upper, result):
            subprocess.run(["cp", "-a", "--", str(lower), str(copy_)], check=True)
        apply(build(second), upper)
        out = io.BytesIO()
        write_diff(lower, upper, out)
        apply(out.getvalue(), result)
        assert_same(disk_view(result, dir_mtimes=True), disk_view(upper, dir_mtimes=True))


# --- hostile layers ---------------------------------------------------------------------------

_SEGMENTS = ["..", ".", "", "a", "b", "s", "outside", "passwd", "@OUT", WH + "a", ".wh..", OPAQUE]
hostile_names = st.builds(
    lambda lead, segs: lead + "/".join(segs),
    st.sampled_from(["", "/", "./", "../"]),
    st.lists(st.sampled_from(_SEGMENTS), min_size=1, max_size=4),
)
hostile_links = st.one_of(
    hostile_names,
    st.sampled_from(
        ["@OUT", "@OUT/passwd", "@OUT/sub", "../../outside", "../../outside/passwd", "..", "/"]
    ),
)
hostile_entries = st.builds(
    E,
    name=hostile_names,
    kind=st.sampled_from(["file", "file", "dir", "symlink", "symlink", "hardlink", "fifo"]),
    data=st.just(b"pwned"),
    mode=st.sampled_from([0o777, 0o4777, 0o000]),
    uid=st.just(4242),
    link=hostile_links,
)


def _apply_or_refuse(data: bytes, target: Path, **kw: object) -> bool:
    try:
        apply(data, target, **kw)  # type: ignore[arg-type]
    except InvalidArgument:
        return False
    return True


@settings(FUZZ, max_examples=250)
@given(
    lower=st.lists(hostile_entries, max_size=5),
    upper=st.lists(hostile_entries, min_size=1, max_size=5),
)
@example(  # a hard link replacing the directory that holds its own source
    lower=[E("d", "dir"), E("d/f", data=b"f")], upper=[E("d", "hardlink", link="d/f")]
)
@example(lower=[], upper=[E("d/f", data=b"f"), E("d", "hardlink", link="d/f")])
def test_hostile_layers_never_escape(lower: list[E], upper: list[E]) -> None:
    """Either refused with InvalidArgument or applied inside the target; never outside."""
    with arena() as (base, outside):
        low = base / "low"
        if not _apply_or_refuse(build(lower, outside=str(outside)), low):
            return
        top = build(upper, outside=str(outside))
        native = base / "native"
        subprocess.run(["cp", "-a", "--", str(low), str(native)], check=True)
        _apply_or_refuse(top, native)
        _apply_or_refuse(top, base / "up", overlay=True, parents=[low])


# --- regressions found by the properties above ----------------------------------------------


def test_native_opaque_keeps_lower_dir_written_into() -> None:
    with arena() as (base, _):
        target = base / "t"
        apply(build([E("d", "dir"), E("d/old", data=b"old")]), target)
        apply(build([E(OPAQUE), E("d/new", data=b"new")]), target)
        assert sorted(disk_view(target)) == ["d", "d/new"]


@pytest.mark.parametrize("staged", [False, True], ids=["streamed", "staged"])
def test_opaque_marker_keeps_its_directories_under_a_higher_opaque(staged: bool) -> None:
    # Found by the fuzzer: the marker's directory and its parents belong to the layer, as
    # containerd creates them (mkparent) before handling a whiteout.
    layers = [[E("a/b/f", data=b"f")], [E(OPAQUE), E("a/b/" + OPAQUE)]]
    with arena() as (base, _):
        target = base / "target"
        apply_all(layers, [target] * 2, overlay=False, staged=staged)
        assert_same(disk_view(target), model_view(model_apply({}, layers)))
        assert sorted(disk_view(target)) == ["a", "a/b"]


def test_native_whiteout_of_dir_written_into_is_ignored() -> None:
    with arena() as (base, _):
        target = base / "t"
        apply(build([E("d", "dir"), E("d/old", data=b"old")]), target)
        apply(build([E("d/new", data=b"new"), E(WH + "d")]), target)
        assert sorted(disk_view(target)) == ["d", "d/new", "d/old"]


@pytest.mark.parametrize("overlay", [False, True], ids=["native", "overlay"])
def test_hardlink_replacing_its_own_directory_is_refused(overlay: bool) -> None:
    with arena() as (base, _):
        entries = [E("d", "dir"), E("d/f", data=b"f"), E("d", "hardlink", link="d/f")]
        with pytest.raises(InvalidArgument, match="directory holding its target"):
            apply(build(entries), base / "t", overlay=overlay)


@pytest.mark.parametrize(
    "layers",
    [
        # a directory over a file that replaced a lower directory: opaque
        [[E("d", "dir"), E("d/old", data=b"x")], [E("d", data=b"f"), E("d", "dir")]],
        # whiteouts and opaque markers in a directory no layer has: nothing is made
        [[E("a", data=b"x")], [E("nodir/" + WH + "x"), E("nodir2/" + OPAQUE)]],
    ],
    ids=["dir-over-file-over-dir", "whiteout-in-missing-dir"],
)
def test_overlay_matches_native(layers: list[list[E]]) -> None:
    with arena() as (base, _):
        native, uppers = base / "native", []
        for i, entries in enumerate(layers):
            apply(build(entries), native)
            up = base / f"up{i}"
            apply(build(entries), up, overlay=True, parents=list(reversed(uppers)))
            uppers.append(up)
        merged = mount_overlay(base, uppers)
        if merged is None:
            pytest.skip("overlay mounts unavailable")
        assert_same(disk_view(merged), model_view(model_apply({}, layers)))
        assert_same(disk_view(native), model_view(model_apply({}, layers)))


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ([E("f", data=b"a")], [E("f", data=b"b")]),  # same size, same whole-second mtime
        ([E("s", "symlink", link="a")], [E("s", "symlink", link="a", mtime=T0 + 1)]),
        ([E("f", data=b"a")], [E("d/f", data=b"b")]),  # d gets a nanosecond mtime
    ],
    ids=["content-only", "symlink-mtime", "ns-mtime"],
)
def test_write_diff_regressions(first: list[E], second: list[E]) -> None:
    with arena() as (base, _):
        lower, upper, result = base / "lower", base / "upper", base / "result"
        apply(build(first), lower)
        for copy_ in (upper, result):
            subprocess.run(["cp", "-a", "--", str(lower), str(copy_)], check=True)
        apply(build(second), upper)
        out = io.BytesIO()
        write_diff(lower, upper, out)
        apply(out.getvalue(), result)
        assert_same(disk_view(result, dir_mtimes=True), disk_view(upper, dir_mtimes=True))


def test_overlay_hardlink_to_lower_file_in_opaque_dir() -> None:
    """An opaque marker takes effect at the layer's end, as natively: the lower source is
    found (and its copy-up then pruned), a lower directory written into keeps its metadata."""
    layers = [
        [E("d", "dir"), E("d/src", data=b"s"), E("d/in", "dir", mode=0o710, uid=5), E("d/in/x")],
        [E("d/" + OPAQUE), E("d/link", "hardlink", link="d/src"), E("d/in/new", data=b"n")],
    ]
    with arena() as (base, _):
        uppers: list[Path] = []
        for i, entries in enumerate(layers):
            up = base / f"up{i}"
            apply(build(entries), up, overlay=True, parents=list(reversed(uppers)))
            uppers.append(up)
        merged = mount_overlay(base, uppers)
        if merged is None:
            pytest.skip("overlay mounts unavailable")
        assert sorted(disk_view(merged)) == ["d", "d/in", "d/in/new", "d/link"]
        assert_same(disk_view(merged), model_view(model_apply({}, layers)))


def _clean_name_reference(name: str) -> tuple[str, ...] | None:
    parts: list[str] = []
    for comp in name.split("/"):
        if comp in ("", "."):
            continue
        if comp == "..":
            if not parts:
                return None
            parts.pop()
        else:
            parts.append(comp)
    return tuple(parts)


@settings(max_examples=2000, deadline=None)
@given(st.text(alphabet="./a", max_size=12))
def test_clean_name_fast_path_agrees(name: str) -> None:
    assert clean_name(name) == _clean_name_reference(name)
