from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from linerd.content.local import LocalStore
from linerd.errdefs import AlreadyExists, FailedPrecondition, NotFound, OutOfRange

pytestmark = pytest.mark.unit


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_write_commit_and_read(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    ingest = store.open_ingest("ns", "ref/with:odd chars", 10, "")
    ingest.write(0, b"hello")
    ingest.write(5, b"world")
    digest = ingest.commit(store.path(sha(b"helloworld")), 10, sha(b"helloworld"))
    assert digest == sha(b"helloworld")
    assert store.read(digest, 5, 100) == b"world"
    assert list(store.digests()) == [digest]
    assert store.list_ingests() == []


def test_resume_keeps_offset_and_digest(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    first = store.open_ingest("ns", "r", 0, "")
    first.write(0, b"abc")
    first.close()
    resumed = store.open_ingest("ns", "r", 0, "")
    assert resumed.offset == 3
    assert resumed.digest == sha(b"abc")
    resumed.write(3, b"def")
    assert resumed.digest == sha(b"abcdef")


def test_offset_rules(tmp_path: Path) -> None:
    ingest = LocalStore(tmp_path).open_ingest("ns", "r", 0, "")
    ingest.write(0, b"abcdef")
    with pytest.raises(OutOfRange):
        ingest.write(2, b"x")
    ingest.write(0, b"xy")  # offset 0 on a non-empty ingest restarts it
    assert ingest.offset == 2
    assert ingest.digest == sha(b"xy")


def test_write_past_total_is_refused(tmp_path: Path) -> None:
    ingest = LocalStore(tmp_path).open_ingest("ns", "r", 4, "")
    with pytest.raises(OutOfRange):
        ingest.write(0, b"12345")
    assert ingest.offset == 0


def test_commit_checks_size_and_digest(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    ingest = store.open_ingest("ns", "r", 0, "")
    ingest.write(0, b"data")
    with pytest.raises(FailedPrecondition, match="size"):
        ingest.commit(store.path(sha(b"data")), 5, "")
    with pytest.raises(FailedPrecondition, match="digest"):
        ingest.commit(store.path(sha(b"data")), 4, sha(b"other"))
    assert store.ingest_status("ns", "r").offset == 4  # nothing lost


def test_commit_of_existing_blob(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    for ref in ("a", "b"):
        ingest = store.open_ingest("ns", ref, 0, "")
        ingest.write(0, b"same")
        if ref == "a":
            ingest.commit(store.path(sha(b"same")), 0, "")
        else:
            with pytest.raises(AlreadyExists):
                ingest.commit(store.path(sha(b"same")), 0, "")
    assert store.list_ingests() == []


def test_ingests_are_per_namespace(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.open_ingest("one", "r", 0, "").close()
    assert [ns for ns, _ in store.list_ingests()] == ["one"]
    assert store.list_ingests("two") == []
    with pytest.raises(NotFound):
        store.ingest_status("two", "r")
    with pytest.raises(NotFound):
        store.abort("two", "r")
    store.abort("one", "r")
    assert store.list_ingests() == []


def test_broken_ingest_dirs_are_removed(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    (store.ingests / "deadbeef.tmp").mkdir()
    (store.ingests / "nometa").mkdir()
    store.open_ingest("ns", "kept", 0, "").close()
    committing = store.open_ingest("ns", "committed", 0, "")
    committing.close()
    (committing.directory / "data").unlink()  # a crash after the commit's rename
    store = LocalStore(tmp_path)  # the daemon's restart reads the ingests again
    assert [s.ref for _, s in store.list_ingests("ns")] == ["kept"]
    assert len(store.remove_broken()) == 3
    assert [s.ref for _, s in store.list_ingests()] == ["kept"]


def test_restart_at_zero_takes_the_new_total(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    first = store.open_ingest("ns", "r", 4, "")
    first.write(0, b"1234")
    first.close()
    again = store.open_ingest("ns", "r", 0, "")  # a client that does not know the size
    again.write(0, b"longer than four", total=0)
    assert again.offset == 16


def test_ingest_left_by_a_crashed_commit_starts_again(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    first = store.open_ingest("ns", "r", 0, "")
    first.write(0, b"abc")
    first.close()
    (first.directory / "data").unlink()  # renamed into blobs, then SIGKILL before cleanup
    store = LocalStore(tmp_path)  # the daemon's restart reads the ingests again
    with pytest.raises(NotFound):
        store.ingest_status("ns", "r")
    again = store.open_ingest("ns", "r", 0, "")
    assert again.offset == 0
    again.write(0, b"abc")
    assert again.digest == sha(b"abc")


def test_put_stores_a_whole_blob_once(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    with pytest.raises(FailedPrecondition, match="digest"):
        store.put(sha(b"other"), b"document")
    assert list(store.digests()) == []
    assert store.put(sha(b"document"), b"document")
    assert not store.put(sha(b"document"), b"document")  # there already
    assert store.read(sha(b"document"), 0, 100) == b"document"
    assert list(store.ingests.iterdir()) == []  # no temporary file left


def test_listing_follows_the_ingests_without_rereading_them(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    ingest = store.open_ingest("ns", "r", 10, "")
    ingest.write(0, b"12345")
    assert [(ns, s.ref, s.offset) for ns, s in store.list_ingests()] == [("ns", "r", 5)]
    ingest.close()  # closed: still there, to be resumed
    assert store.ingest_status("ns", "r").offset == 5
    again = LocalStore(tmp_path)  # a restart reads them from disk
    assert [(ns, s.ref, s.offset) for ns, s in again.list_ingests()] == [("ns", "r", 5)]
    resumed = again.open_ingest("ns", "r", 10, "")
    resumed.write(5, b"67890")
    resumed.commit(again.path(sha(b"1234567890")), 10, "")
    assert again.list_ingests() == []
