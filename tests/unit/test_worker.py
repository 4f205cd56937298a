"""Staging a layer in a worker process, and moving it into place from there, gives what
doing both in a thread gives."""

from __future__ import annotations

import gzip
import io
import os
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from linerd.diff.worker import YIELDING_NICE, apply_in_process, stage_in_process
from linerd.errdefs import Internal, InvalidArgument
from linerd.layers import Target, apply_staged_to, apply_stream, stage_stream

pytestmark = pytest.mark.unit

GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


def layer(*members: tuple[str, bytes] | tuple[str, bytes, int, int, int]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data, *meta in members:
            mode, uid, gid = meta or (0o640, 7, 0)
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.uid, info.gid = len(data), mode, uid, gid
            info.mtime = 1_600_000_000
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(buf.getvalue(), mtime=0)


BLOB = layer(
    ("a", os.urandom(300_000)),
    (".wh.gone", b""),
    ("d/b", b"bee"),
    # the worker creates files with their modes and skips chown where it can: not these
    ("suid", b"s", 0o4755, 0, 0),
    ("sgid", b"g", 0o2710, 0, 5),
    ("sticky", b"t", 0o1644, 0, 0),
    ("none", b"n", 0o000, 0, 0),
    ("root", b"r", 0o755, 0, 0),
    ("group", b"o", 0o600, 0, 9),
)


class Pipe(io.RawIOBase):
    """Not a file: the worker gets these bytes through a pipe."""

    def __init__(self, data: bytes) -> None:
        self._src = io.BytesIO(data)

    def read(self, size: int = -1) -> bytes:
        return self._src.read(size)


def staged_files(directory: Path) -> dict[str, tuple[object, ...]]:
    out: dict[str, tuple[object, ...]] = {}
    for p in directory.iterdir():
        st = p.stat()
        out[p.name] = (p.read_bytes(), st.st_mode & 0o7777, st.st_uid, st.st_gid, st.st_mtime_ns)
    return out


def tree(root: Path) -> dict[str, tuple[object, ...]]:
    out: dict[str, tuple[object, ...]] = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        data = p.read_bytes() if p.is_file() else b""
        mtime = 0 if p.is_dir() else st.st_mtime_ns  # an implicit directory's is "now"
        out[str(p.relative_to(root))] = (data, st.st_mode, st.st_uid, st.st_gid, mtime)
    return out


@pytest.mark.parametrize("as_file", [True, False], ids=["file", "pipe"])
def test_worker_stages_and_moves_what_a_thread_does(tmp_path: Path, as_file: bool) -> None:
    for d in ("thread", "worker", "by-thread", "by-worker"):
        (tmp_path / d).mkdir()
    (tmp_path / "blob").write_bytes(BLOB)
    with open(tmp_path / "blob", "rb") as f:
        want = stage_stream(f, GZIP, tmp_path / "thread", "L", size=0)
    with open(tmp_path / "blob", "rb") as f:
        source = f if as_file else Pipe(BLOB)
        got = stage_in_process(source, tmp_path / "worker", GZIP, "L")  # type: ignore[arg-type]
    try:
        assert got.applied == want.applied
        assert got.compressed == "" == want.compressed  # the blob's digest is checked elsewhere
        assert got.entries == []  # the worker keeps them: they never load in the daemon
        files = staged_files(tmp_path / "worker")
        assert files == staged_files(tmp_path / "thread")
        assert "1" not in files  # no file for the whiteout
        apply_staged_to(want, tmp_path / "thread", Target(tmp_path / "by-thread", overlay=False))
        apply_staged_to(got, tmp_path / "worker", Target(tmp_path / "by-worker", overlay=False))
    finally:
        got.close()
    moved = tree(tmp_path / "by-worker")
    assert moved == tree(tmp_path / "by-thread")
    assert sorted(moved) == ["a", "d", "d/b", "group", "none", "root", "sgid", "sticky", "suid"]
    if os.geteuid() == 0:
        modes = {n: (m & 0o7777, u, g) for n, (_, m, u, g, _) in moved.items() if n != "d"}
        assert modes == {
            "a": (0o640, 7, 0),
            "d/b": (0o640, 7, 0),
            "suid": (0o4755, 0, 0),
            "sgid": (0o2710, 0, 5),
            "sticky": (0o1644, 0, 0),
            "none": (0o000, 0, 0),
            "root": (0o755, 0, 0),
            "group": (0o600, 0, 9),
        }


def _descendants_nice() -> dict[int, set[int]]:
    """The nice values of the threads of every process below this one, by pid."""
    parents: dict[int, int] = {}
    nices: dict[int, set[int]] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            parents[int(pid)] = int(
                Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1]
            )
            nices[int(pid)] = {
                int(Path(f"/proc/{pid}/task/{tid}/stat").read_text().rpartition(")")[2].split()[16])
                for tid in os.listdir(f"/proc/{pid}/task")
            }
        except (OSError, IndexError):
            continue
    below = {os.getpid()}
    for _ in range(3):  # the zygote's workers are our grandchildren
        below |= {p for p, parent in parents.items() if parent in below}
    return {p: nices[p] for p in below - {os.getpid()} if p in nices}


class Watched(Pipe):
    """Bytes still being written: the worker's priority is looked at half-way through."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.half = len(data) // 2
        self.seen: dict[int, set[int]] | None = None

    def read(self, size: int = -1) -> bytes:
        if self._src.tell() >= self.half and self.seen is None:
            self.seen = _descendants_nice()
        return super().read(min(size, 4096) if size > 0 else size)


@pytest.mark.skipif(os.geteuid() != 0, reason="raising a priority back needs CAP_SYS_NICE")
def test_a_yielding_worker_is_nice_while_its_bytes_come_and_stages_the_same(
    tmp_path: Path,
) -> None:
    for d in ("plain", "yielding"):
        (tmp_path / d).mkdir()
    want = stage_in_process(Pipe(BLOB), tmp_path / "plain", GZIP, "L")  # type: ignore[arg-type]
    source = Watched(BLOB)
    got = stage_in_process(source, tmp_path / "yielding", GZIP, "L", yielding=True)  # type: ignore[arg-type]
    try:
        after = _descendants_nice()
        assert got.applied == want.applied
        assert staged_files(tmp_path / "yielding") == staged_files(tmp_path / "plain")
    finally:
        got.close()
        want.close()
    assert source.seen is not None
    niced = {p for p, nices in source.seen.items() if nices == {YIELDING_NICE}}
    assert len(niced) == 1  # the worker, every thread of it; not the zygote
    (worker,) = niced
    assert after[worker] == {0}  # the bytes were all there: staging what is left comes first


class WrittenEarly(Pipe):
    """A live blob whose writer is done while its reader is only half-way through: the
    worker's priority is looked at a quarter in, then at the half right after the writer's
    last byte is told (`when_written`, as linerd.content.live's readers have it)."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.told: list[Callable[[], None]] = []
        self.before: dict[int, set[int]] | None = None
        self.after: dict[int, set[int]] | None = None

    def when_written(self, fn: Callable[[], None]) -> None:
        self.told.append(fn)

    def read(self, size: int = -1) -> bytes:
        at, n = self._src.tell(), len(self._src.getbuffer())
        if at >= n // 4 and self.before is None:
            self.before = _descendants_nice()
        if at >= n // 2 and self.after is None:
            for fn in self.told:
                fn()
            self.after = _descendants_nice()
        return super().read(min(size, 4096) if size > 0 else size)


@pytest.mark.skipif(os.geteuid() != 0, reason="raising a priority back needs CAP_SYS_NICE")
def test_a_yielding_worker_is_raised_back_at_its_writers_last_byte(tmp_path: Path) -> None:
    source = WrittenEarly(BLOB)
    got = stage_in_process(source, tmp_path, GZIP, "L", yielding=True)  # type: ignore[arg-type]
    got.close()
    assert source.before is not None and source.after is not None
    (worker,) = {p for p, nices in source.before.items() if nices == {YIELDING_NICE}}
    # Half of its bytes still to read, but all written: what is left of it is what waits.
    assert source.after[worker] == {0}


def test_a_worker_let_go_moves_nothing_and_ends(tmp_path: Path) -> None:
    (tmp_path / "staging").mkdir()
    got = stage_in_process(Pipe(BLOB), tmp_path / "staging", GZIP, "L")  # type: ignore[arg-type]
    assert got.worker is not None
    pid = got.worker._proc.pid  # type: ignore[union-attr]
    got.close()
    got.close()  # idempotent
    assert not os.path.exists(f"/proc/{pid}")  # ended and reaped
    assert len(staged_files(tmp_path / "staging")) == 8
    with pytest.raises(Internal, match="let go"):
        got.worker.move(tmp_path, overlay=False, parents=())


def test_errors_of_the_move_reach_the_caller(tmp_path: Path) -> None:
    (tmp_path / "staging").mkdir()
    (tmp_path / "target").mkdir()
    (tmp_path / "target" / "d").write_bytes(b"a file where the layer has a directory")
    got = stage_in_process(Pipe(BLOB), tmp_path / "staging", GZIP, "L")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="d/b"):
        apply_staged_to(got, tmp_path / "staging", Target(tmp_path / "target", overlay=False))
    assert got.worker is not None and got.worker._proc is None  # ended with the answer


@pytest.mark.parametrize("overlay", [False, True], ids=["plain", "overlay"])
@pytest.mark.parametrize("as_file", [True, False], ids=["file", "pipe"])
def test_a_worker_applies_onto_a_directory_what_a_thread_does(
    tmp_path: Path, as_file: bool, overlay: bool
) -> None:
    for d in ("by-thread", "by-worker"):
        (tmp_path / d).mkdir()
    (tmp_path / "blob").write_bytes(BLOB)
    with open(tmp_path / "blob", "rb") as f:
        want = apply_stream(f, GZIP, Target(tmp_path / "by-thread", overlay=overlay), "L")
    with open(tmp_path / "blob", "rb") as f:
        source = f if as_file else Pipe(BLOB)
        got = apply_in_process(source, tmp_path / "by-worker", GZIP, "L", overlay=overlay)  # type: ignore[arg-type]
    assert got == want
    assert tree(tmp_path / "by-worker") == tree(tmp_path / "by-thread")
    assert sorted(tree(tmp_path / "by-worker")) == [
        "a", "d", "d/b", "group", "none", "root", "sgid", "sticky", "suid",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("blob", "error", "match"),
    [
        (layer(("ok", b"x"), ("../escape", b"y")), InvalidArgument, "escapes the root"),
        (BLOB[: len(BLOB) // 2], InvalidArgument, "L: corrupt gzip stream"),
    ],
    ids=["dot-dot", "truncated"],
)
def test_errors_of_a_worker_applying_reach_the_caller_as_they_are(
    tmp_path: Path, blob: bytes, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        apply_in_process(Pipe(blob), tmp_path, GZIP, "L", overlay=False)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("blob", "error", "match"),
    [
        (layer(("ok", b"x"), ("../escape", b"y")), InvalidArgument, "escapes the root"),
        (BLOB[: len(BLOB) // 2], InvalidArgument, "L: corrupt gzip stream"),
        (b"\x01" * 700, InvalidArgument, "not a tar archive"),
    ],
    ids=["dot-dot", "truncated", "garbage"],
)
def test_worker_errors_reach_the_caller_as_they_are(
    tmp_path: Path, blob: bytes, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        stage_in_process(Pipe(blob), tmp_path, GZIP, "L")  # type: ignore[arg-type]


def test_a_worker_that_cannot_work_is_an_internal_error(tmp_path: Path) -> None:
    with pytest.raises(Internal, match="L: "):
        stage_in_process(Pipe(BLOB), tmp_path / "missing", GZIP, "L")  # type: ignore[arg-type]
