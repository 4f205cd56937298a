"""Content service against a real linerd: the Write stream as the API reference §5.1 describes
it, Read (§5.2), Info/Update/List/Delete, ingests, namespace isolation and crash safety."""

from __future__ import annotations

import hashlib
import queue
import random
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from support import Linerd, ns

from liner_api.containerd.services.content.v1 import content_pb2, content_pb2_grpc
from liner_api.containerd.services.leases.v1 import leases_pb2, leases_pb2_grpc

pytestmark = pytest.mark.integration

STAT = content_pb2.WriteAction.Value("STAT")
WRITE = content_pb2.WriteAction.Value("WRITE")
COMMIT = content_pb2.WriteAction.Value("COMMIT")
EMPTY_DIGEST = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
MiB = 1 << 20
C = grpc.StatusCode


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class WriteStream:
    """One Content/Write call driven in lockstep: `send` one request, get its response."""

    def __init__(self, stub: content_pb2_grpc.ContentStub, md) -> None:
        self._requests: queue.Queue[content_pb2.WriteContentRequest | None] = queue.Queue()
        self._responses = stub.Write(iter(self._requests.get, None), metadata=md)

    def send(self, **fields) -> content_pb2.WriteContentResponse:
        self._requests.put(content_pb2.WriteContentRequest(**fields))
        return next(self._responses)

    def fails(self, **fields) -> grpc.RpcError:
        with pytest.raises(grpc.RpcError) as info:
            self.send(**fields)
        return info.value

    def finish(self) -> None:
        """Half-close and wait for the server to end the call (it then let go of the ref)."""
        self._requests.put(None)
        for _ in self._responses:
            pass

    def cancel(self) -> None:
        self._responses.cancel()


class Ns:
    """A fresh namespace with a lease, so no collection run by another test takes its blobs."""

    def __init__(self, ch: grpc.Channel) -> None:
        self.name = f"t-{uuid.uuid4().hex[:10]}"
        self.lease = "hold"
        self.content = content_pb2_grpc.ContentStub(ch)
        leases_pb2_grpc.LeasesStub(ch).Create(
            leases_pb2.CreateRequest(id=self.lease), metadata=ns(self.name)
        )
        self.md = ns(self.name, self.lease)

    def stream(self) -> WriteStream:
        return WriteStream(self.content, self.md)

    def write(
        self, data: bytes, labels: dict[str, str] | None = None, ref: str | None = None
    ) -> str:
        digest = sha(data)
        w = self.stream()
        w.send(action=STAT, ref=ref or f"ref-{digest}", total=len(data), expected=digest)
        offset = 0
        for start in range(0, len(data), MiB):
            resp = w.send(action=WRITE, offset=offset, data=data[start : start + MiB])
            offset = resp.offset
        resp = w.send(action=COMMIT, offset=offset, total=len(data), expected=digest, labels=labels)
        assert resp.digest == digest
        w.finish()
        return digest

    def info(self, digest: str) -> content_pb2.Info:
        return self.content.Info(content_pb2.InfoRequest(digest=digest), metadata=self.md).info

    def read(self, digest: str, offset: int = 0, size: int = 0) -> bytes:
        req = content_pb2.ReadContentRequest(digest=digest, offset=offset, size=size)
        return b"".join(r.data for r in self.content.Read(req, metadata=self.md))

    def status(self, ref: str) -> content_pb2.Status:
        return self.content.Status(content_pb2.StatusRequest(ref=ref), metadata=self.md).status

    def statuses(self, *filters: str) -> list[content_pb2.Status]:
        req = content_pb2.ListStatusesRequest(filters=list(filters))
        return list(self.content.ListStatuses(req, metadata=self.md).statuses)

    def list(self, *filters: str) -> list[content_pb2.Info]:
        req = content_pb2.ListContentRequest(filters=list(filters))
        return [i for r in self.content.List(req, metadata=self.md) for i in r.info]

    def update(self, digest: str, labels: dict[str, str], paths: list[str] | None = None):
        req = content_pb2.UpdateRequest(
            info=content_pb2.Info(digest=digest, labels=labels),
            update_mask=FieldMask(paths=paths) if paths is not None else None,
        )
        return self.content.Update(req, metadata=self.md).info


def code_of(fn, *args, **kwargs) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        fn(*args, **kwargs)
    return info.value.code()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Linerd]:
    d = Linerd(tmp_path_factory.mktemp("content"))
    d.start()
    yield d
    d.stop()


@pytest.fixture(scope="module")
def chan(daemon: Linerd) -> Iterator[grpc.Channel]:
    with daemon.channel() as ch:
        yield ch


@pytest.fixture
def space(chan: grpc.Channel) -> Ns:
    return Ns(chan)


# -- Write: the lockstep protocol ---------------------------------------------------------------


def test_first_message_needs_a_ref(space: Ns) -> None:
    err = space.stream().fails(action=STAT, total=3)
    assert err.code() == C.INVALID_ARGUMENT
    assert "reference" in err.details()
    err = space.stream().fails(action=WRITE, data=b"abc")
    assert err.code() == C.INVALID_ARGUMENT


def test_full_write_sequence(space: Ns) -> None:
    data = random.Random(1).randbytes(2 * MiB + 12345)
    digest = sha(data)
    w = space.stream()
    before = time.time()
    stat = w.send(action=STAT, ref="layer-sha256:abc/def", total=len(data), expected=digest)
    assert stat.action == STAT
    assert stat.offset == 0
    assert stat.total == len(data)
    assert stat.digest == EMPTY_DIGEST
    assert stat.started_at.seconds >= int(before) - 1
    assert stat.updated_at.seconds >= int(before) - 1
    # ctr follows up with empty STATs (no ref): same status.
    again = w.send()
    assert (again.action, again.offset, again.total, again.digest) == (
        STAT,
        0,
        len(data),
        EMPTY_DIGEST,
    )
    assert again.started_at == stat.started_at

    offset = 0
    running = hashlib.sha256()
    for start in range(0, len(data), MiB):
        chunk = data[start : start + MiB]
        resp = w.send(action=WRITE, offset=offset, data=chunk)
        running.update(chunk)
        assert resp.action == WRITE
        assert resp.offset - offset == len(chunk)
        assert resp.total == len(data)
        assert resp.digest == "sha256:" + running.hexdigest()
        offset = resp.offset
    # Mid-way, the ingest is listed.
    [status] = space.statuses()
    assert (status.ref, status.offset, status.total, status.expected) == (
        "layer-sha256:abc/def",
        len(data),
        len(data),
        digest,
    )

    done = w.send(action=COMMIT, offset=offset, total=len(data), expected=digest, labels={"k": "v"})
    assert done.action == COMMIT
    assert done.offset == len(data)
    assert done.digest == digest
    w.finish()

    info = space.info(digest)
    assert (info.digest, info.size, dict(info.labels)) == (digest, len(data), {"k": "v"})
    assert info.created_at.seconds >= int(before) - 1
    assert info.updated_at.seconds >= int(before) - 1
    assert space.read(digest) == data
    assert space.statuses() == []
    assert code_of(space.status, "layer-sha256:abc/def") == C.NOT_FOUND


def test_commit_without_expected(space: Ns) -> None:
    """Import commits without `expected`: the digest is whatever was written."""
    data = b"no expectations"
    w = space.stream()
    w.send(action=STAT, ref="tar-index.json")
    w.send(action=WRITE, data=data)
    done = w.send(action=COMMIT, offset=len(data))
    assert (done.offset, done.digest) == (len(data), sha(data))
    w.finish()
    assert space.info(sha(data)).size == len(data)


def test_write_and_commit_in_one_message(space: Ns) -> None:
    data = b"all at once"
    w = space.stream()
    w.send(action=STAT, ref="one", total=len(data))
    done = w.send(action=COMMIT, data=data, total=len(data), expected=sha(data))
    assert (done.offset, done.digest) == (len(data), sha(data))
    w.finish()
    assert space.read(sha(data)) == data


def test_already_exists_on_stat_and_on_commit(space: Ns) -> None:
    data = b"stored once"
    digest = space.write(data, {"first": "1"})
    # STAT with an expected digest that is stored: ALREADY_EXISTS, nothing changes.
    err = space.stream().fails(action=STAT, ref="again", total=len(data), expected=digest)
    assert err.code() == C.ALREADY_EXISTS
    assert space.statuses() == []
    assert dict(space.info(digest).labels) == {"first": "1"}
    # Writing the same bytes without `expected` fails only at COMMIT.
    w = space.stream()
    w.send(action=STAT, ref="again", total=len(data))
    w.send(action=WRITE, data=data)
    err = w.fails(action=COMMIT, offset=len(data), total=len(data))
    assert err.code() == C.ALREADY_EXISTS
    assert space.statuses() == []
    assert dict(space.info(digest).labels) == {"first": "1"}
    assert space.read(digest) == data


def test_resume_after_closing_the_stream(space: Ns) -> None:
    data = random.Random(2).randbytes(3 * MiB)
    digest, half = sha(data), len(data) // 2
    w = space.stream()
    w.send(action=STAT, ref="resumable", total=len(data), expected=digest)
    assert w.send(action=WRITE, offset=0, data=data[:half]).offset == half
    w.finish()

    status = space.status("resumable")
    assert (status.offset, status.total, status.expected) == (half, len(data), digest)

    w = space.stream()
    stat = w.send(action=STAT, ref="resumable", total=len(data), expected=digest)
    assert stat.offset == half
    assert stat.digest == sha(data[:half])
    assert stat.started_at == status.started_at
    resp = w.send(action=WRITE, offset=half, data=data[half:])
    assert resp.offset == len(data)
    done = w.send(action=COMMIT, offset=len(data), total=len(data), expected=digest)
    assert done.digest == digest
    w.finish()
    assert space.read(digest) == data


def test_write_at_offset_zero_truncates(space: Ns) -> None:
    w = space.stream()
    w.send(action=STAT, ref="restart")
    assert w.send(action=WRITE, data=b"garbage garbage").offset == 15
    resp = w.send(action=WRITE, offset=0, data=b"good")
    assert resp.offset == 4
    assert resp.digest == sha(b"good")
    done = w.send(action=COMMIT, offset=4, expected=sha(b"good"))
    assert done.offset == 4
    w.finish()
    assert space.read(sha(b"good")) == b"good"


def test_write_at_wrong_offset_is_out_of_range(space: Ns) -> None:
    w = space.stream()
    w.send(action=STAT, ref="gappy", total=100)
    w.send(action=WRITE, data=b"0123456789")
    err = w.fails(action=WRITE, offset=20, data=b"x")
    assert err.code() == C.OUT_OF_RANGE
    assert space.status("gappy").offset == 10
    # Past the announced total is out of range as well.
    w = space.stream()
    assert w.send(action=STAT, ref="gappy").offset == 10
    err = w.fails(action=WRITE, offset=10, data=b"y" * 91)
    assert err.code() == C.OUT_OF_RANGE
    assert space.status("gappy").offset == 10
    space.content.Abort(content_pb2.AbortRequest(ref="gappy"), metadata=space.md)


@pytest.mark.parametrize("wrong", ["digest", "size"])
def test_commit_mismatch_keeps_the_ingest(space: Ns, wrong: str) -> None:
    data = f"what was really written ({wrong})".encode()
    listed_before = space.list()
    w = space.stream()
    w.send(action=STAT, ref="mismatch", total=len(data))
    w.send(action=WRITE, data=data)
    if wrong == "digest":
        err = w.fails(action=COMMIT, offset=len(data), expected=sha(b"something else"))
    else:
        err = w.fails(action=COMMIT, offset=len(data), total=len(data) + 1, expected=sha(data))
    assert err.code() == C.FAILED_PRECONDITION
    assert "unexpected commit" in err.details()
    # Nothing was stored; the ingest is intact and can still be committed.
    assert space.list() == listed_before
    assert code_of(space.info, sha(data)) == C.NOT_FOUND
    assert space.status("mismatch").offset == len(data)
    w = space.stream()
    assert w.send(action=STAT, ref="mismatch").offset == len(data)
    done = w.send(action=COMMIT, offset=len(data), total=len(data), expected=sha(data))
    assert done.digest == sha(data)
    w.finish()
    assert space.read(sha(data)) == data


def test_malformed_expected_digest(space: Ns) -> None:
    err = space.stream().fails(action=STAT, ref="x", expected="sha256:nothex")
    assert err.code() == C.INVALID_ARGUMENT


def test_two_writers_on_one_ref(chan: grpc.Channel, space: Ns) -> None:
    first = space.stream()
    first.send(action=STAT, ref="contended", total=4)
    first.send(action=WRITE, data=b"ab")
    err = space.stream().fails(action=STAT, ref="contended", total=4)
    assert err.code() == C.UNAVAILABLE
    # Abort while it is being written is refused too.
    assert (
        code_of(space.content.Abort, content_pb2.AbortRequest(ref="contended"), metadata=space.md)
        == C.UNAVAILABLE
    )
    # Another ref, or the same ref in another namespace, is independent.
    other = space.stream()
    other.send(action=STAT, ref="contended-2")
    other.finish()
    elsewhere = Ns(chan).stream()
    assert elsewhere.send(action=STAT, ref="contended").offset == 0
    elsewhere.finish()
    first.finish()
    second = space.stream()
    assert second.send(action=STAT, ref="contended", total=4).offset == 2
    second.send(action=WRITE, offset=2, data=b"cd")
    assert second.send(action=COMMIT, offset=4, total=4).digest == sha(b"abcd")
    second.finish()


def test_status_list_statuses_abort(space: Ns) -> None:
    for ref, data in [("layer-a", b"aaaa"), ("layer-b", b"bb"), ("config-c", b"c")]:
        w = space.stream()
        w.send(action=STAT, ref=ref, total=10, expected=sha(ref.encode()))
        w.send(action=WRITE, data=data)
        w.finish()
    status = space.status("layer-a")
    assert (status.ref, status.offset, status.total) == ("layer-a", 4, 10)
    assert status.expected == sha(b"layer-a")
    assert status.started_at.seconds > 0
    assert status.updated_at.seconds > 0
    assert {s.ref for s in space.statuses()} == {"layer-a", "layer-b", "config-c"}
    assert {s.ref for s in space.statuses("")} == {"layer-a", "layer-b", "config-c"}
    assert [s.ref for s in space.statuses('ref=="layer-b"')] == ["layer-b"]
    assert {s.ref for s in space.statuses("ref~=^layer-")} == {"layer-a", "layer-b"}
    assert [s.ref for s in space.statuses(f"expected=={sha(b'config-c')}")] == ["config-c"]

    space.content.Abort(content_pb2.AbortRequest(ref="layer-a"), metadata=space.md)
    assert code_of(space.status, "layer-a") == C.NOT_FOUND
    assert (
        code_of(space.content.Abort, content_pb2.AbortRequest(ref="layer-a"), metadata=space.md)
        == C.NOT_FOUND
    )
    assert {s.ref for s in space.statuses()} == {"layer-b", "config-c"}
    # An aborted ref starts over.
    w = space.stream()
    assert w.send(action=STAT, ref="layer-a").offset == 0
    w.finish()


# -- Read ---------------------------------------------------------------------------------------


def test_read(space: Ns) -> None:
    data = random.Random(3).randbytes(2 * MiB + 100)
    digest = space.write(data)
    assert space.read(digest) == data
    assert space.read(digest, offset=10, size=20) == data[10:30]
    assert space.read(digest, offset=MiB - 5, size=10) == data[MiB - 5 : MiB + 5]
    assert space.read(digest, offset=100) == data[100:]
    assert space.read(digest, offset=len(data) - 3, size=100) == data[-3:]
    assert space.read(digest, offset=len(data)) == b""
    # Chunks of at most 1 MiB, each tagged with its offset.
    responses = list(
        space.content.Read(content_pb2.ReadContentRequest(digest=digest), metadata=space.md)
    )
    assert all(len(r.data) <= MiB for r in responses)
    offset = 0
    for r in responses:
        assert r.offset == offset
        offset += len(r.data)
    assert offset == len(data)

    assert code_of(space.read, digest, offset=len(data) + 1) == C.OUT_OF_RANGE
    assert code_of(space.read, sha(b"never written")) == C.NOT_FOUND
    assert code_of(space.read, "sha256:short") == C.INVALID_ARGUMENT
    assert code_of(space.read, "not a digest") == C.INVALID_ARGUMENT


def test_read_small_blob_again_and_elsewhere(space: Ns, chan: grpc.Channel) -> None:
    """Small blobs are answered from memory after the first read: the same bytes and errors,
    and still only in namespaces that record them."""
    data = b'{"schemaVersion": 2, "config": {}}'
    digest = space.write(data)
    for _ in range(2):
        assert space.read(digest) == data
        assert space.read(digest, offset=3, size=4) == data[3:7]
        assert space.read(digest, offset=len(data)) == b""
        assert space.read(digest, offset=len(data) - 2, size=100) == data[-2:]
        assert code_of(space.read, digest, offset=len(data) + 1) == C.OUT_OF_RANGE
    other = Ns(chan)
    assert code_of(other.read, digest) == C.NOT_FOUND
    space.content.Delete(content_pb2.DeleteContentRequest(digest=digest), metadata=space.md)
    assert code_of(space.read, digest) == C.NOT_FOUND


# -- Info / Update / List / Delete --------------------------------------------------------------


def test_info_and_update_masks(space: Ns) -> None:
    digest = space.write(b"manifest", {"a": "1", "b": "2"})
    key = "containerd.io/gc.ref.content.l.0"
    layer = sha(b"layer")

    info = space.update(digest, {key: layer, "a": "ignored"}, [f"labels.{key}"])
    assert dict(info.labels) == {"a": "1", "b": "2", key: layer}
    assert info.digest == digest
    assert info.size == len(b"manifest")
    assert info.updated_at.ToNanoseconds() >= info.created_at.ToNanoseconds()
    assert dict(space.info(digest).labels) == dict(info.labels)

    # A masked key absent from the request's labels is removed.
    info = space.update(digest, {}, ["labels.b"])
    assert dict(info.labels) == {"a": "1", key: layer}
    # `labels` replaces them all, and so does an empty mask.
    info = space.update(digest, {"x": "y"}, ["labels"])
    assert dict(info.labels) == {"x": "y"}
    info = space.update(digest, {"z": "w"})
    assert dict(info.labels) == {"z": "w"}
    info = space.update(digest, {"p": "1", "q": "2"}, ["labels.p", "labels.q"])
    assert dict(info.labels) == {"z": "w", "p": "1", "q": "2"}

    for bad in (["size"], ["digest"], ["labels.a", "created_at"], ["label.x"]):
        assert code_of(space.update, digest, {"a": "b"}, bad) == C.INVALID_ARGUMENT
    assert dict(space.info(digest).labels) == {"z": "w", "p": "1", "q": "2"}
    assert code_of(space.update, sha(b"unknown"), {"a": "b"}, ["labels.a"]) == C.NOT_FOUND
    assert code_of(space.update, "sha256:bad", {"a": "b"}, ["labels.a"]) == C.INVALID_ARGUMENT
    assert code_of(space.info, sha(b"unknown")) == C.NOT_FOUND
    assert code_of(space.info, "md5:abc") == C.INVALID_ARGUMENT


def test_list_filters_and_delete(space: Ns) -> None:
    assert space.list() == []
    one = space.write(b"one", {"kind": "config", "containerd.io/uncompressed": "x"})
    two = space.write(b"two two", {"kind": "layer"})
    three = space.write(b"three", {})
    assert [i.digest for i in space.list()] == sorted([one, two, three])
    assert {i.digest: i.size for i in space.list()} == {one: 3, two: 7, three: 5}
    assert [i.digest for i in space.list("labels.kind==layer")] == [two]
    assert [i.digest for i in space.list('labels."containerd.io/uncompressed"')] == [one]
    assert sorted(i.digest for i in space.list("labels.kind")) == sorted([one, two])
    assert [i.digest for i in space.list(f"digest=={three}")] == [three]
    assert sorted(i.digest for i in space.list("labels.kind==layer", f"digest=={three}")) == (
        sorted([two, three])
    )
    assert space.list("labels.kind==none") == []
    assert [i.digest for i in space.list("size==7")] == [two]
    assert code_of(space.list, "labels.kind==") == C.INVALID_ARGUMENT  # a malformed filter

    space.content.Delete(content_pb2.DeleteContentRequest(digest=two), metadata=space.md)
    assert code_of(space.info, two) == C.NOT_FOUND
    assert code_of(space.read, two) == C.NOT_FOUND
    assert sorted(i.digest for i in space.list()) == sorted([one, three])
    assert (
        code_of(
            space.content.Delete, content_pb2.DeleteContentRequest(digest=two), metadata=space.md
        )
        == C.NOT_FOUND
    )
    assert (
        code_of(
            space.content.Delete,
            content_pb2.DeleteContentRequest(digest="sha256:zz"),
            metadata=space.md,
        )
        == C.INVALID_ARGUMENT
    )


def test_list_is_batched(space: Ns) -> None:
    digests = {space.write(f"blob {i}".encode()) for i in range(101)}
    req = content_pb2.ListContentRequest()
    messages = list(space.content.List(req, metadata=space.md))
    assert len(messages) >= 2
    assert {i.digest for m in messages for i in m.info} == digests


def test_namespace_isolation(chan: grpc.Channel) -> None:
    a, b = Ns(chan), Ns(chan)
    digest = a.write(b"only in a", {"owner": "a"})
    w = a.stream()
    w.send(action=STAT, ref="a-partial", total=10)
    w.send(action=WRITE, data=b"12345")
    w.finish()

    assert code_of(b.info, digest) == C.NOT_FOUND
    assert code_of(b.read, digest) == C.NOT_FOUND
    assert code_of(b.update, digest, {"x": "y"}, ["labels.x"]) == C.NOT_FOUND
    assert (
        code_of(b.content.Delete, content_pb2.DeleteContentRequest(digest=digest), metadata=b.md)
        == C.NOT_FOUND
    )
    assert b.list() == []
    assert b.statuses() == []
    assert code_of(b.status, "a-partial") == C.NOT_FOUND
    assert (
        code_of(b.content.Abort, content_pb2.AbortRequest(ref="a-partial"), metadata=b.md)
        == C.NOT_FOUND
    )
    lease_ids = [
        x.id
        for x in leases_pb2_grpc.LeasesStub(chan)
        .List(leases_pb2.ListRequest(), metadata=b.md)
        .leases
    ]
    assert lease_ids == ["hold"]  # b's own, not a's
    assert (
        code_of(
            leases_pb2_grpc.LeasesStub(chan).ListResources,
            leases_pb2.ListResourcesRequest(id="nope-a"),
            metadata=b.md,
        )
        == C.NOT_FOUND
    )
    # The same ref in b is a different ingest.
    w = b.stream()
    assert w.send(action=STAT, ref="a-partial").offset == 0
    w.finish()
    assert a.status("a-partial").offset == 5
    # a is untouched.
    assert dict(a.info(digest).labels) == {"owner": "a"}
    assert a.read(digest) == b"only in a"

    # b writing the same bytes shares the blob but has its own record and labels.
    err = b.stream().fails(action=STAT, ref="x", expected=digest)
    assert err.code() == C.ALREADY_EXISTS
    assert b.read(digest) == b"only in a"
    assert dict(b.info(digest).labels) == {}
    assert dict(a.info(digest).labels) == {"owner": "a"}


def test_leased_write_is_a_lease_resource(chan: grpc.Channel, space: Ns) -> None:
    digest = space.write(b"leased")
    resources = (
        leases_pb2_grpc.LeasesStub(chan)
        .ListResources(leases_pb2.ListResourcesRequest(id=space.lease), metadata=space.md)
        .resources
    )
    assert ("content", digest) in {(r.type, r.id) for r in resources}


def test_write_with_unknown_lease(space: Ns) -> None:
    md = ns(space.name, "no-such-lease")
    w = WriteStream(space.content, md)
    w.send(action=STAT, ref="unleased", total=2)
    err = w.fails(action=COMMIT, data=b"zz", total=2)
    assert err.code() == C.NOT_FOUND
    assert code_of(space.info, sha(b"zz")) == C.NOT_FOUND


# -- Crash safety -------------------------------------------------------------------------------


def test_resume_after_sigkill(linerd: Linerd, tmp_path: Path) -> None:
    size = 64 * MiB
    data = random.Random(64).randbytes(size)
    digest = sha(data)
    with linerd.channel() as ch:
        space = Ns(ch)
        others = {
            space.write(f"other blob {i}".encode() * 1000, {"n": str(i), "k.e/y": "v"}): i
            for i in range(3)
        }
        before = {d: (space.info(d), space.read(d)) for d in others}
        w = space.stream()
        assert w.send(action=STAT, ref="big", total=size, expected=digest).offset == 0
        sent = 0
        while sent < size // 2:
            sent = w.send(action=WRITE, offset=sent, data=data[sent : sent + MiB]).offset
        linerd.kill()  # the stream is still open
        with pytest.raises(grpc.RpcError):
            w.send(action=WRITE, offset=sent, data=data[sent : sent + MiB])
        w.cancel()

    linerd.start()
    with linerd.channel() as ch:
        space.content = content_pb2_grpc.ContentStub(ch)
        [status] = space.statuses()
        assert status.ref == "big"
        assert 0 < status.offset <= sent
        assert status.total == size
        assert status.expected == digest

        w = space.stream()
        stat = w.send(action=STAT, ref="big", total=size, expected=digest)
        offset = stat.offset
        assert 0 < offset <= sent
        assert stat.digest == sha(data[:offset])
        while offset < size:
            resp = w.send(action=WRITE, offset=offset, data=data[offset : offset + MiB])
            assert resp.offset > offset
            offset = resp.offset
        done = w.send(action=COMMIT, offset=offset, total=size, expected=digest)
        assert (done.offset, done.digest) == (size, digest)
        w.finish()

        assert space.info(digest).size == size
        assert space.read(digest) == data
        assert space.statuses() == []
        # Everything written before the crash is as it was.
        assert {d: (space.info(d), space.read(d)) for d in others} == before
        assert {i.digest for i in space.list()} == {*others, digest}
    blob = linerd.root / "content" / "blobs" / "sha256" / digest.removeprefix("sha256:")
    assert blob.stat().st_size == size
