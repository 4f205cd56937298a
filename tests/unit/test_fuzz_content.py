"""The Content/Write state machine (hypothesis): random request sequences against LocalStore
ingests, checked against a model.

Requests: open (a new write, or a resume), write at the right offset, at a wrong one or at 0
(restart), commit with right or wrong size and digest, abort, and a "crash" (the handle is
dropped and the ingest reopened from disk). Invariants: a blob is only ever stored under its
own digest; a refused commit loses no bytes; offsets and running digests equal the model's.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from linerd.content.local import Ingest, LocalStore
from linerd.errdefs import AlreadyExists, FailedPrecondition, NotFound, OutOfRange

pytestmark = pytest.mark.unit

set_hypothesis_home_dir(os.path.join(tempfile.gettempdir(), "liner-hypothesis"))


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


KEYS = [("ns1", "ref-a"), ("ns1", "ref-b"), ("ns2", "ref-a")]
PAYLOADS = [b"", b"x", b"hello", b"world", b"\0" * 7, bytes(range(256))]
keys = st.sampled_from(KEYS)
chunks = st.sampled_from(PAYLOADS) | st.binary(max_size=64)


@dataclass
class ModelIngest:
    data: bytes
    total: int
    expected: str


class ContentWrites(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="liner-fuzz-content-"))
        self.store = LocalStore(self.dir)
        self.handles: dict[tuple[str, str], Ingest] = {}
        self.ingests: dict[tuple[str, str], ModelIngest] = {}
        self.blobs: dict[str, bytes] = {}

    def teardown(self) -> None:
        for h in self.handles.values():
            h.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # --- requests -------------------------------------------------------------------------

    @rule(key=keys, total=st.sampled_from([0, 0, 5, 10, 300]), expected=st.sampled_from(["", "x"]))
    def open(self, key: tuple[str, str], total: int, expected: str) -> None:
        if expected == "x":
            expected = sha(b"hello")
        if key in self.handles:
            self.handles.pop(key).close()  # one writer at a time: the old stream ends
        self.handles[key] = self.store.open_ingest(*key, total, expected)
        m = self.ingests.get(key)
        if m is None:
            self.ingests[key] = ModelIngest(b"", total, expected)
        else:
            if expected:
                m.expected = expected
            if total > 0:
                m.total = total

    @precondition(lambda self: self.handles)
    @rule(
        data=st.data(),
        chunk=chunks,
        where=st.sampled_from(["right", "right", "zero", "wrong"]),
        total=st.sampled_from([0, 0, 5, 300]),
    )
    def write(self, data: st.DataObject, chunk: bytes, where: str, total: int) -> None:
        key = data.draw(st.sampled_from(sorted(self.handles)))
        h, m = self.handles[key], self.ingests[key]
        offset = {"right": len(m.data), "zero": 0}.get(where)
        if offset is None:
            offset = data.draw(st.integers(0, len(m.data) + 10).filter(lambda o: o != len(m.data)))
        # The model: offset 0 on a non-empty ingest restarts it (and takes the new total);
        # any other offset must be the current one; nothing may pass a known total.
        restarted = offset == 0 and len(m.data) > 0
        if restarted:
            m.data = b""
            m.total = total
        if not restarted and offset != len(m.data):
            with pytest.raises(OutOfRange):
                h.write(offset, chunk, total)
            return
        if chunk and m.total > 0 and len(m.data) + len(chunk) > m.total:
            with pytest.raises(OutOfRange):
                h.write(offset, chunk, total)
            return
        h.write(offset, chunk, total)
        m.data += chunk

    @precondition(lambda self: self.handles)
    @rule(
        data=st.data(),
        size=st.sampled_from(["right", "zero", "wrong"]),
        digest=st.sampled_from(["right", "empty", "wrong"]),
    )
    def commit(self, data: st.DataObject, size: str, digest: str) -> None:
        key = data.draw(st.sampled_from(sorted(self.handles)))
        h, m = self.handles[key], self.ingests[key]
        n = {"right": len(m.data), "zero": 0, "wrong": len(m.data) + 1}[size]
        expected = {"right": sha(m.data), "empty": "", "wrong": sha(m.data + b"!")}[digest]
        path = self.store.path(expected or h.digest)  # as the Content service does
        if size == "wrong" or digest == "wrong":
            with pytest.raises(FailedPrecondition):
                h.commit(path, n, expected)
            return  # nothing lost: the invariants check the ingest is intact
        actual = sha(m.data)
        del self.handles[key], self.ingests[key]
        if actual in self.blobs:
            with pytest.raises(AlreadyExists):
                h.commit(path, n, expected)
            return
        assert h.commit(path, n, expected) == actual
        self.blobs[actual] = m.data

    @precondition(lambda self: self.handles)
    @rule(data=st.data())
    def crash_and_resume(self, data: st.DataObject) -> None:
        """The writer goes away (a dropped stream, a killed daemon); a new one resumes."""
        key = data.draw(st.sampled_from(sorted(self.handles)))
        self.handles.pop(key).close()
        self.handles[key] = self.store.open_ingest(*key, 0, "")

    @rule(key=keys)
    def abort(self, key: tuple[str, str]) -> None:
        if key not in self.ingests:
            with pytest.raises(NotFound):
                self.store.abort(*key)
            return
        self.store.abort(*key)
        if key in self.handles:
            self.handles.pop(key).close()
        del self.ingests[key]

    @rule(key=keys)
    def status(self, key: tuple[str, str]) -> None:
        if key not in self.ingests:
            with pytest.raises(NotFound):
                self.store.ingest_status(*key)
            return
        s = self.store.ingest_status(*key)
        m = self.ingests[key]
        assert (s.ref, s.offset, s.total, s.expected) == (key[1], len(m.data), m.total, m.expected)

    # --- invariants -----------------------------------------------------------------------

    @invariant()
    def blobs_match_their_digests(self) -> None:
        stored = set(self.store.digests())
        assert stored == set(self.blobs)
        for digest in stored:
            data = self.store.path(digest).read_bytes()
            assert sha(data) == digest and data == self.blobs[digest]

    @invariant()
    def ingests_match_the_model(self) -> None:
        listed = {(ns, s.ref): s.offset for ns, s in self.store.list_ingests()}
        assert listed == {k: len(m.data) for k, m in self.ingests.items()}
        for key, h in self.handles.items():
            m = self.ingests[key]
            assert h.offset == len(m.data)
            assert h.digest == sha(m.data)
            assert (self.store.ingest_status(*key).offset) == len(m.data)


ContentWrites.TestCase.settings = settings(
    derandomize=True,
    deadline=None,
    database=None,
    max_examples=120,
    stateful_step_count=30,
    suppress_health_check=[HealthCheck.too_slow],
)
TestContentWrites = ContentWrites.TestCase
