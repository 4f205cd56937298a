"""Garbage collection against a real linerd: leases, gc.root, gc.ref.content labels, expiry
and blobs shared by namespaces. Collections are triggered with Leases/Delete{sync: true}."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from support import Linerd, ns

from liner_api.containerd.services.content.v1 import content_pb2, content_pb2_grpc
from liner_api.containerd.services.leases.v1 import leases_pb2, leases_pb2_grpc

pytestmark = pytest.mark.integration

STAT = content_pb2.WriteAction.Value("STAT")
WRITE = content_pb2.WriteAction.Value("WRITE")
COMMIT = content_pb2.WriteAction.Value("COMMIT")
ROOT = "containerd.io/gc.root"
EXPIRE = "containerd.io/gc.expire"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def unique(prefix: str) -> bytes:
    return f"{prefix} {uuid.uuid4()}".encode()


class Client:
    def __init__(self, daemon: Linerd, ch: grpc.Channel) -> None:
        self.daemon = daemon
        self.content = content_pb2_grpc.ContentStub(ch)
        self.leases = leases_pb2_grpc.LeasesStub(ch)

    def blob_file(self, digest: str) -> Path:
        return self.daemon.root / "content" / "blobs" / "sha256" / digest.removeprefix("sha256:")

    def write(
        self, namespace: str, data: bytes, labels: dict[str, str] | None = None, lease: str = ""
    ) -> str:
        digest = sha(data)
        reqs = [
            content_pb2.WriteContentRequest(
                action=STAT, ref=f"ref-{digest}", total=len(data), expected=digest
            ),
            content_pb2.WriteContentRequest(action=WRITE, data=data),
            content_pb2.WriteContentRequest(
                action=COMMIT, offset=len(data), total=len(data), expected=digest, labels=labels
            ),
        ]
        md = ns(namespace, lease or None)
        assert list(self.content.Write(iter(reqs), metadata=md))[-1].digest == digest
        return digest

    def exists(self, namespace: str, digest: str) -> bool:
        try:
            self.content.Info(content_pb2.InfoRequest(digest=digest), metadata=ns(namespace))
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.NOT_FOUND
            return False
        return True

    def lease(self, namespace: str, lease_id: str, labels: dict[str, str] | None = None) -> str:
        req = leases_pb2.CreateRequest(id=lease_id, labels=labels)
        return self.leases.Create(req, metadata=ns(namespace)).lease.id

    def lease_ids(self, namespace: str) -> set[str]:
        got = self.leases.List(leases_pb2.ListRequest(), metadata=ns(namespace))
        return {lease.id for lease in got.leases}

    def delete_lease(self, namespace: str, lease_id: str) -> None:
        self.leases.Delete(leases_pb2.DeleteRequest(id=lease_id, sync=True), metadata=ns(namespace))

    def collect(self) -> None:
        """A synchronous collection, through a throwaway lease."""
        scratch = f"gc-{uuid.uuid4().hex[:12]}"
        self.lease("gc-trigger", scratch)
        self.delete_lease("gc-trigger", scratch)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Linerd]:
    d = Linerd(tmp_path_factory.mktemp("gc"))
    d.start()
    yield d
    d.stop()


@pytest.fixture(scope="module")
def client(daemon: Linerd) -> Iterator[Client]:
    with daemon.channel() as ch:
        yield Client(daemon, ch)


@pytest.fixture
def name() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


def test_lease_keeps_content_until_deleted(client: Client, name: str) -> None:
    client.lease(name, "pull")
    digest = client.write(name, unique("leased"), lease="pull")
    client.collect()
    client.collect()
    assert client.exists(name, digest)
    assert client.blob_file(digest).exists()

    client.delete_lease(name, "pull")
    assert not client.exists(name, digest)
    assert not client.blob_file(digest).exists()
    assert client.lease_ids(name) == set()


def test_unreferenced_content_is_collected(client: Client, name: str) -> None:
    digest = client.write(name, unique("nobody holds me"))
    assert client.exists(name, digest)
    client.collect()
    assert not client.exists(name, digest)
    assert not client.blob_file(digest).exists()


def test_gc_root_and_content_refs(client: Client, name: str) -> None:
    # Parents are written first, naming their children by digest: no blob is ever unreferenced,
    # whenever a background collection runs.
    config_data, nested_data, child_data = unique("config"), unique("nested"), unique("child")
    layer_data = [unique(f"layer {i}") for i in range(2)]
    config, nested, index_child = sha(config_data), sha(nested_data), sha(child_data)
    layers = [sha(d) for d in layer_data]
    stray_data = unique("stray")
    stray = sha(stray_data)
    manifest = client.write(
        name,
        unique("manifest"),
        {
            ROOT: "2024-01-01T00:00:00Z",
            "containerd.io/gc.ref.content.config": config,
            "containerd.io/gc.ref.content.l.0": layers[0],
            "containerd.io/gc.ref.content.l.1": layers[1],
            "containerd.io/gc.ref.content.m.0": index_child,
            "containerd.io/uncompressed": stray,  # informational, not a reference
        },
    )
    client.write(name, child_data, {"containerd.io/gc.ref.content": nested})
    for data in [nested_data, config_data, *layer_data, stray_data]:
        client.write(name, data)
    client.collect()
    for digest in [manifest, config, *layers, index_child, nested]:
        assert client.exists(name, digest), digest
        assert client.blob_file(digest).exists()
    assert not client.exists(name, stray)
    assert not client.blob_file(stray).exists()

    # Dropping a reference label (through Content/Update) lets that blob go.
    client.content.Update(
        content_pb2.UpdateRequest(
            info=content_pb2.Info(digest=manifest),
            update_mask={"paths": ["labels.containerd.io/gc.ref.content.l.1"]},
        ),
        metadata=ns(name),
    )
    client.collect()
    assert not client.exists(name, layers[1])
    assert client.exists(name, layers[0])
    # Dropping the root label lets everything go.
    client.content.Update(
        content_pb2.UpdateRequest(
            info=content_pb2.Info(digest=manifest), update_mask={"paths": [f"labels.{ROOT}"]}
        ),
        metadata=ns(name),
    )
    client.collect()
    for digest in [manifest, config, layers[0], index_child, nested]:
        assert not client.exists(name, digest), digest
        assert not client.blob_file(digest).exists()


def test_references_do_not_cross_namespaces(client: Client, name: str) -> None:
    other = name + "-other"
    target = client.write(other, unique("target elsewhere"))
    client.write(name, unique("root"), {ROOT: "x", "containerd.io/gc.ref.content": target})
    client.collect()
    assert not client.exists(other, target)
    assert not client.blob_file(target).exists()


def test_leased_content_refs_are_followed(client: Client, name: str) -> None:
    client.lease(name, "import")
    child_data = unique("child")
    parent = client.write(
        name,
        unique("parent"),
        {"containerd.io/gc.ref.content.l.0": sha(child_data)},
        lease="import",
    )
    child = client.write(name, child_data)
    client.collect()
    assert client.exists(name, parent)
    assert client.exists(name, child)
    client.delete_lease(name, "import")
    assert not client.exists(name, parent)
    assert not client.exists(name, child)


def test_expired_lease_is_collected(client: Client, name: str) -> None:
    past = (datetime.now(UTC) - timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    future = (datetime.now(UTC) + timedelta(hours=24)).strftime("%Y-%m-%dT%H:%M:%SZ")
    client.lease(name, "expired", {EXPIRE: past})
    client.lease(name, "alive", {EXPIRE: future})
    gone = client.write(name, unique("under an expired lease"), lease="expired")
    kept = client.write(name, unique("under a live lease"), lease="alive")
    client.collect()
    assert client.lease_ids(name) == {"alive"}
    assert not client.exists(name, gone)
    assert not client.blob_file(gone).exists()
    assert client.exists(name, kept)
    assert client.blob_file(kept).exists()
    client.delete_lease(name, "alive")
    assert not client.exists(name, kept)


def test_invalid_expire_label_is_refused(client: Client, name: str) -> None:
    with pytest.raises(grpc.RpcError) as info:
        client.lease(name, "bad", {EXPIRE: "tomorrow"})
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_shared_content_survives_delete_in_one_namespace(client: Client, name: str) -> None:
    a, b = name + "-a", name + "-b"
    client.lease(a, "la")
    client.lease(b, "lb")
    data = unique("shared")
    digest = client.write(a, data, {"who": "a"}, lease="la")
    # b's STAT finds the bytes already stored: ALREADY_EXISTS, and b records them too.
    with pytest.raises(grpc.RpcError) as info:
        client.write(b, data, lease="lb")
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert client.exists(b, digest)

    client.content.Delete(content_pb2.DeleteContentRequest(digest=digest), metadata=ns(a))
    client.collect()
    assert not client.exists(a, digest)
    assert client.exists(b, digest)
    assert client.blob_file(digest).exists()
    read = content_pb2.ReadContentRequest(digest=digest)
    assert b"".join(r.data for r in client.content.Read(read, metadata=ns(b))) == data

    # Dropping b's lease leaves nobody: the file goes.
    client.delete_lease(b, "lb")
    assert not client.exists(b, digest)
    assert not client.blob_file(digest).exists()
    client.delete_lease(a, "la")


def test_lease_of_one_namespace_does_not_keep_another(client: Client, name: str) -> None:
    a, b = name + "-a", name + "-b"
    client.lease(a, "la")
    data = unique("shared, one lease")
    digest = client.write(a, data, lease="la")
    with pytest.raises(grpc.RpcError) as info:
        client.write(b, data)  # recorded in b, but nothing holds it there
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert client.exists(b, digest)
    client.collect()
    assert not client.exists(b, digest)
    assert client.exists(a, digest)
    assert client.blob_file(digest).exists()
    client.delete_lease(a, "la")
    assert not client.blob_file(digest).exists()


def test_ingests_survive_collection(client: Client, name: str) -> None:
    reqs = [
        content_pb2.WriteContentRequest(action=STAT, ref="partial", total=10),
        content_pb2.WriteContentRequest(action=WRITE, data=b"12345"),
    ]
    list(client.content.Write(iter(reqs), metadata=ns(name)))
    client.collect()
    status = client.content.Status(content_pb2.StatusRequest(ref="partial"), metadata=ns(name))
    assert status.status.offset == 5
    client.content.Abort(content_pb2.AbortRequest(ref="partial"), metadata=ns(name))


def test_content_delete_schedules_collection(client: Client, name: str) -> None:
    """Content/Delete removes the record at once; the file follows with the next collection."""
    client.lease(name, "l")
    digest = client.write(name, unique("deleted"), lease="l")
    client.content.Delete(content_pb2.DeleteContentRequest(digest=digest), metadata=ns(name))
    assert not client.exists(name, digest)
    client.collect()
    assert not client.blob_file(digest).exists()
    client.delete_lease(name, "l")
