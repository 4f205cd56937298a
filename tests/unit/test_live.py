"""Live blobs: read (or spliced into a pipe) while their bytes are written."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from linerd.content.live import LiveBlob
from linerd.errdefs import Aborted

pytestmark = pytest.mark.unit

DATA = os.urandom(300_000)


def _splice_all(blob: LiveBlob) -> tuple[bytes, BaseException | None]:
    r, w = os.pipe()
    got: list[bytes] = []

    def drain() -> None:
        with os.fdopen(r, "rb") as f:
            got.append(f.read())

    reader = threading.Thread(target=drain)
    reader.start()
    error: BaseException | None = None
    try:
        with blob.open() as live:
            live.splice_to(w)  # type: ignore[attr-defined]
    except Aborted as e:
        error = e
    finally:
        os.close(w)
        reader.join()
    return got[0], error


def _write(blob: LiveBlob, path: Path, error: BaseException | None = None) -> None:
    with open(path, "ab") as f:
        for i in range(0, len(DATA), 70_000):
            f.write(DATA[i : i + 70_000])
            f.flush()
            blob.grew(f.tell())
    blob.finish(error)


def test_splice_follows_the_writer_to_the_end(tmp_path: Path) -> None:
    path = tmp_path / "data"
    path.write_bytes(b"")
    blob = LiveBlob(path, 0)
    writer = threading.Thread(target=_write, args=(blob, path))
    writer.start()
    got, error = _splice_all(blob)
    writer.join()
    assert error is None and got == DATA


def test_splice_reports_a_failed_write(tmp_path: Path) -> None:
    path = tmp_path / "data"
    path.write_bytes(b"")
    blob = LiveBlob(path, 0)
    writer = threading.Thread(target=_write, args=(blob, path, OSError("gone")))
    writer.start()
    _, error = _splice_all(blob)
    writer.join()
    assert isinstance(error, Aborted)


def test_the_last_byte_is_told_once_when_it_is_written(tmp_path: Path) -> None:
    path = tmp_path / "data"
    path.write_bytes(b"")
    blob = LiveBlob(path, 0, total=100)
    told: list[str] = []
    blob.when_written(lambda: told.append("early"))
    blob.grew(60)
    assert told == []  # bytes still to come
    blob.grew(100)
    assert told == ["early"]  # the writer's last byte, before any commit
    blob.grew(100)
    blob.finish(digest="sha256:x")
    assert told == ["early"]  # once
    blob.when_written(lambda: told.append("late"))
    assert told == ["early", "late"]  # asked after the fact: told at once


@pytest.mark.parametrize("error", [None, Aborted("gone")], ids=["committed", "failed"])
def test_a_writer_done_short_of_its_total_tells_it_too(
    tmp_path: Path, error: BaseException | None
) -> None:
    path = tmp_path / "data"
    path.write_bytes(b"")
    blob = LiveBlob(path, 0)  # no total known: only the writer's end says it
    told: list[int] = []
    with blob.open() as reader:
        reader.when_written(lambda: told.append(1))  # type: ignore[attr-defined]
    blob.grew(50)
    assert told == []
    blob.finish(error)
    assert told == [1]
