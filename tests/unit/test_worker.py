"""Staging a layer in a worker process gives what staging in a thread gives."""

from __future__ import annotations

import gzip
import io
import os
import tarfile
from pathlib import Path

import pytest

from linerd.diff.worker import stage_in_process
from linerd.errdefs import Internal, InvalidArgument
from linerd.layers import stage_stream

pytestmark = pytest.mark.unit

GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


def layer(*members: tuple[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.uid, info.mtime = len(data), 0o640, 7, 1_600_000_000
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(buf.getvalue(), mtime=0)


BLOB = layer(("a", os.urandom(300_000)), (".wh.gone", b""), ("d/b", b"bee"))


class Pipe(io.RawIOBase):
    """Not a file: the worker gets these bytes through a pipe."""

    def __init__(self, data: bytes) -> None:
        self._src = io.BytesIO(data)

    def read(self, size: int = -1) -> bytes:
        return self._src.read(size)


def staged_files(directory: Path) -> dict[str, tuple[bytes, int, int]]:
    return {
        p.name: (p.read_bytes(), p.stat().st_mode & 0o7777, p.stat().st_uid)
        for p in directory.iterdir()
    }


@pytest.mark.parametrize("as_file", [True, False], ids=["file", "pipe"])
def test_worker_stages_what_a_thread_stages(tmp_path: Path, as_file: bool) -> None:
    (tmp_path / "blob").write_bytes(BLOB)
    (tmp_path / "thread").mkdir()
    (tmp_path / "worker").mkdir()
    with open(tmp_path / "blob", "rb") as f:
        want = stage_stream(f, GZIP, tmp_path / "thread", "L", size=0)
    with open(tmp_path / "blob", "rb") as f:
        source = f if as_file else Pipe(BLOB)
        got = stage_in_process(source, tmp_path / "worker", GZIP, "L")  # type: ignore[arg-type]
    assert got == want
    assert got.compressed == "sha256:" + __import__("hashlib").sha256(BLOB).hexdigest()
    assert [e.name for e in got.entries] == ["a", ".wh.gone", "d/b"]
    assert staged_files(tmp_path / "worker") == staged_files(tmp_path / "thread")
    assert sorted(os.listdir(tmp_path / "worker")) == ["0", "2"]  # no file for the whiteout


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
