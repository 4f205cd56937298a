"""Workers forked from one warm zygote: replaced when it dies, stopped when idle, and started
the slow way when no zygote answers. Their staging is tested in test_worker."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from test_worker import BLOB, GZIP, Pipe, staged_files

from linerd.diff import worker
from linerd.diff.worker import stage_in_process
from linerd.diff.zygote import Zygote
from linerd.errdefs import Internal
from linerd.layers import Target, apply_staged_to

pytestmark = pytest.mark.unit


@pytest.fixture
def zygote(monkeypatch: pytest.MonkeyPatch) -> Iterator[Zygote]:
    z = Zygote()
    monkeypatch.setattr(worker, "ZYGOTE", z)
    yield z
    z.close()


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def eventually(check: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def gone(pid: int) -> Callable[[], bool]:
    """Dead: no process, or a zombie (its new parent, whoever reparenting made it, reaps it
    when it gets to it; a loaded machine can take seconds)."""

    def dead() -> bool:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except FileNotFoundError:
            return True
        return stat.rpartition(")")[2].split()[0] in ("Z", "X")

    return dead


def stage(tmp_path: Path, name: str, source: io.RawIOBase | None = None) -> worker.StagedLayer:
    (tmp_path / name).mkdir()
    return stage_in_process(source or Pipe(BLOB), tmp_path / name, GZIP, "L")  # type: ignore[arg-type]


def test_workers_are_forks_of_one_zygote(tmp_path: Path, zygote: Zygote) -> None:
    first, second = stage(tmp_path, "a"), stage(tmp_path, "b")
    try:
        procs = [first.worker._proc, second.worker._proc]  # type: ignore[union-attr]
        assert all(isinstance(p, worker._Forked) for p in procs)
        assert {parent_of(p.pid) for p in procs} == {zygote.pid}  # type: ignore[union-attr]
        assert staged_files(tmp_path / "a") == staged_files(tmp_path / "b")
    finally:
        first.close()
        second.close()
    pid = zygote.pid
    assert pid is not None
    zygote.close()
    assert zygote.pid is None and gone(pid)()


def test_a_dead_zygote_is_replaced(tmp_path: Path, zygote: Zygote) -> None:
    stage(tmp_path, "a").close()
    dead = zygote.pid
    assert dead is not None
    os.kill(dead, signal.SIGKILL)
    got = stage(tmp_path, "b")
    got.close()
    assert zygote.pid not in (None, dead)
    assert len(staged_files(tmp_path / "b")) == 8


def test_an_idle_zygote_stops(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    z = Zygote(idle=0.1)
    monkeypatch.setattr(worker, "ZYGOTE", z)
    stage(tmp_path, "a").close()
    pid = z.pid
    assert pid is not None
    assert eventually(lambda: z.pid is None) and eventually(gone(pid))
    stage(tmp_path, "b").close()  # and a new one starts when needed
    assert z.pid not in (None, pid)
    z.close()


def test_the_zygote_stays_while_a_worker_waits_for_its_target(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    z = Zygote(idle=0.1)
    monkeypatch.setattr(worker, "ZYGOTE", z)
    got = stage(tmp_path, "a")  # its worker waits to be told where the files go
    pid = z.pid
    assert pid is not None
    time.sleep(0.5)
    assert z.pid == pid  # its workers would die with it
    (tmp_path / "target").mkdir()
    try:
        apply_staged_to(got, tmp_path / "a", Target(tmp_path / "target", overlay=False))
    finally:
        got.close()
    assert len(list((tmp_path / "target").rglob("*"))) == 9
    assert eventually(lambda: z.pid is None) and eventually(gone(pid))
    z.close()


class Stalled(io.RawIOBase):
    """Half the blob, then nothing until released."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self._parts = [BLOB[: len(BLOB) // 2]]

    def read(self, size: int = -1) -> bytes:
        if self._parts:
            return self._parts.pop()
        self.release.wait(10)
        return b""


def test_workers_die_with_the_zygote(tmp_path: Path, zygote: Zygote) -> None:
    source = Stalled()
    killed: list[int] = []

    def kill_the_zygote() -> None:
        assert eventually(lambda: zygote.pid is not None)
        zpid = zygote.pid
        assert zpid is not None
        children = f"/proc/{zpid}/task/{zpid}/children"
        assert eventually(lambda: bool(Path(children).read_text().split()))
        killed.extend(int(p) for p in Path(children).read_text().split())
        os.kill(zpid, signal.SIGKILL)
        assert all(eventually(gone(p)) for p in killed)  # its parent-death signal
        source.release.set()

    killer = threading.Thread(target=kill_the_zygote)
    killer.start()
    with pytest.raises(Internal, match="the unpack worker failed"):
        stage(tmp_path, "a", source)
    killer.join()
    assert len(killed) == 1


def test_without_a_zygote_workers_start_the_slow_way(
    tmp_path: Path, zygote: Zygote, monkeypatch: pytest.MonkeyPatch
) -> None:
    def cannot_start() -> None:
        raise OSError("no zygote here")

    monkeypatch.setattr(zygote, "_start", cannot_start)
    got = stage(tmp_path, "a")
    (tmp_path / "target").mkdir()
    try:
        assert isinstance(got.worker._proc, subprocess.Popen)  # type: ignore[union-attr]
        apply_staged_to(got, tmp_path / "a", Target(tmp_path / "target", overlay=False))
    finally:
        got.close()
    assert len(list((tmp_path / "target").rglob("*"))) == 9
