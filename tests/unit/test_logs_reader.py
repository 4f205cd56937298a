"""`liner logs`' reader of the CRI log format, against files written here."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from liner.logs import Entry, Follower, log_path, parse, read_log

pytestmark = pytest.mark.unit

T = "2026-12-06T02:00:00.123456789Z"


def line(stream: str, tag: str, content: str) -> bytes:
    return f"{T} {stream} {tag} {content}\n".encode()


def test_parse_the_cri_format() -> None:
    assert parse(f"{T} stdout F hello world".encode()) == Entry(T, "stdout", False, b"hello world")
    assert parse(f"{T} stderr P part".encode()) == Entry(T, "stderr", True, b"part")
    assert parse(f"{T} stdout F".encode()) == Entry(T, "stdout", False, b"")
    assert parse(f"{T} stdout F  two  spaces".encode()).content == b" two  spaces"
    # Not the format: kept whole rather than lost.
    assert parse(b"garbage") == Entry("", "stdout", False, b"garbage")


def test_text_joins_partial_entries() -> None:
    entries = [parse(b) for b in (f"{T} stdout P ab".encode(), f"{T} stdout F cd".encode())]
    assert b"".join(e.text() for e in entries) == b"abcd\n"


def test_the_path_is_per_namespace_and_container() -> None:
    assert log_path(Path("/run/liner"), "ns", "c1") == Path("/run/liner/logs/ns/c1.log")


def test_tail_counts_lines_not_entries(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    path.write_bytes(
        line("stdout", "F", "one")
        + line("stdout", "P", "tw")
        + line("stdout", "F", "o")
        + line("stderr", "F", "three")
        + f"{T} stdout F unfinish".encode()  # still being written: not read yet
    )
    entries, offset = read_log(path)
    assert [e.text() for e in entries] == [b"one\n", b"tw", b"o\n", b"three\n"]
    assert offset == path.stat().st_size - len(f"{T} stdout F unfinish")
    last_two, _ = read_log(path, tail=2)
    assert [e.content for e in last_two] == [b"tw", b"o", b"three"]
    assert read_log(path, tail=0)[0] == []
    assert len(read_log(path, tail=10)[0]) == 4


def test_follow_reads_what_is_appended_and_waits_for_whole_lines(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    path.write_bytes(line("stdout", "F", "old"))
    _, offset = read_log(path)
    follower = Follower(path, offset)
    assert follower.poll() == []
    with open(path, "ab") as f:
        f.write(line("stdout", "F", "new") + f"{T} stdout F ha".encode())
    assert [e.content for e in follower.poll()] == [b"new"]
    with open(path, "ab") as f:
        f.write(b"lf\n")
    assert [e.content for e in follower.poll()] == [b"half"]
    follower.close()


def test_follow_goes_on_after_truncation(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    path.write_bytes(line("stdout", "F", "a" * 50) + line("stdout", "F", "b" * 50))
    _, offset = read_log(path)
    follower = Follower(path, offset)
    # The size cap: the writer truncates the file in place and goes on from its start.
    with open(path, "r+b") as f:
        f.truncate(0)
        f.write(line("stdout", "F", "after"))
    assert [e.content for e in follower.poll()] == [b"after"]
    follower.close()


def test_follow_goes_on_in_a_replaced_file(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    path.write_bytes(line("stdout", "F", "first"))
    follower = Follower(path, 0)
    assert [e.content for e in follower.poll()] == [b"first"]
    with open(path, "ab") as f:
        f.write(line("stdout", "F", "last of old"))
    replacement = tmp_path / "new.log"
    replacement.write_bytes(line("stdout", "F", "new file"))
    os.replace(replacement, path)
    assert [e.content for e in follower.poll()] == [b"last of old", b"new file"]
    follower.close()


def test_follow_waits_for_a_file_not_there_yet(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    follower = Follower(path, 0)
    assert follower.poll() == []
    path.write_bytes(line("stderr", "F", "hello"))
    assert follower.poll() == [Entry(T, "stderr", False, b"hello")]
    follower.close()
