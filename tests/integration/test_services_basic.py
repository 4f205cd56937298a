"""Version, Introspection, Namespaces, Leases and Events against a real linerd."""

from __future__ import annotations

import hashlib
import queue
import threading
import time
import uuid
from collections.abc import Iterator

import grpc
import pytest
from google.protobuf.any_pb2 import Any as AnyPb
from google.protobuf.empty_pb2 import Empty
from google.protobuf.field_mask_pb2 import FieldMask
from support import Linerd, ns

from liner_api.containerd.events import namespace_pb2 as ns_events_pb2
from liner_api.containerd.services.content.v1 import content_pb2, content_pb2_grpc
from liner_api.containerd.services.events.v1 import events_pb2, events_pb2_grpc
from liner_api.containerd.services.introspection.v1 import (
    introspection_pb2,
    introspection_pb2_grpc,
)
from liner_api.containerd.services.leases.v1 import leases_pb2, leases_pb2_grpc
from liner_api.containerd.services.namespaces.v1 import namespaces_pb2, namespaces_pb2_grpc
from liner_api.containerd.services.version.v1 import version_pb2_grpc

pytestmark = pytest.mark.integration

STAT = content_pb2.WriteAction.Value("STAT")
WRITE = content_pb2.WriteAction.Value("WRITE")
COMMIT = content_pb2.WriteAction.Value("COMMIT")
C = grpc.StatusCode
ROOT = "containerd.io/gc.root"
MARKER = "/test/marker"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Linerd]:
    d = Linerd(tmp_path_factory.mktemp("basic"))
    d.start()
    yield d
    d.stop()


@pytest.fixture(scope="module")
def chan(daemon: Linerd) -> Iterator[grpc.Channel]:
    with daemon.channel() as ch:
        yield ch


@pytest.fixture
def name() -> str:
    """A namespace name no other test uses."""
    return f"t-{uuid.uuid4().hex[:10]}"


def code_of(fn, *args, **kwargs) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        fn(*args, **kwargs)
    return info.value.code()


def nss(ch: grpc.Channel) -> namespaces_pb2_grpc.NamespacesStub:
    return namespaces_pb2_grpc.NamespacesStub(ch)


def leases(ch: grpc.Channel) -> leases_pb2_grpc.LeasesStub:
    return leases_pb2_grpc.LeasesStub(ch)


def listed(ch: grpc.Channel) -> set[str]:
    return {n.name for n in nss(ch).List(namespaces_pb2.ListNamespacesRequest()).namespaces}


def write_blob(ch: grpc.Channel, md, data: bytes, labels: dict[str, str] | None = None) -> str:
    """Commit `data`, labelled a GC root so no collection run by another test takes it."""
    labels = {ROOT: "test", **(labels or {})}
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    reqs = [
        content_pb2.WriteContentRequest(
            action=STAT, ref=f"ref-{digest}", total=len(data), expected=digest
        ),
        content_pb2.WriteContentRequest(action=WRITE, offset=0, data=data),
        content_pb2.WriteContentRequest(
            action=COMMIT, offset=len(data), total=len(data), expected=digest, labels=labels
        ),
    ]
    responses = list(content_pb2_grpc.ContentStub(ch).Write(iter(reqs), metadata=md))
    assert responses[-1].digest == digest
    return digest


# -- Version / Introspection -------------------------------------------------------------------


def test_version(chan: grpc.Channel) -> None:
    resp = version_pb2_grpc.VersionStub(chan).Version(Empty())
    assert resp.version
    assert resp.revision


def test_server_uuid_stable_across_restart(linerd: Linerd) -> None:
    with linerd.channel() as ch:
        first = introspection_pb2_grpc.IntrospectionStub(ch).Server(Empty())
    assert uuid.UUID(first.uuid)
    assert first.pid == linerd.proc.pid
    linerd.restart()
    with linerd.channel() as ch:
        second = introspection_pb2_grpc.IntrospectionStub(ch).Server(Empty())
    assert second.uuid == first.uuid
    assert second.pid == linerd.proc.pid != first.pid


def test_plugins(chan: grpc.Channel) -> None:
    stub = introspection_pb2_grpc.IntrospectionStub(chan)
    everything = stub.Plugins(introspection_pb2.PluginsRequest()).plugins
    grpc_ids = {p.id for p in everything if p.type == "io.containerd.grpc.v1"}
    assert {"version", "introspection", "namespaces", "leases", "content", "events"} <= grpc_ids
    assert any(p.type != "io.containerd.grpc.v1" for p in everything)

    only_grpc = stub.Plugins(
        introspection_pb2.PluginsRequest(filters=["type==io.containerd.grpc.v1"])
    ).plugins
    assert only_grpc
    assert {p.type for p in only_grpc} == {"io.containerd.grpc.v1"}
    assert {p.id for p in only_grpc} == grpc_ids

    one = stub.Plugins(
        introspection_pb2.PluginsRequest(filters=["type==io.containerd.grpc.v1,id==leases"])
    ).plugins
    assert [p.id for p in one] == ["leases"]


def test_plugins_are_listed_once_and_export_the_daemons_directories(
    daemon: Linerd, chan: grpc.Channel
) -> None:
    plugins = (
        introspection_pb2_grpc.IntrospectionStub(chan)
        .Plugins(introspection_pb2.PluginsRequest())
        .plugins
    )
    keys = [(p.type, p.id) for p in plugins]
    assert len(keys) == len(set(keys))
    by_key = {(p.type, p.id): p for p in plugins}
    metadata = by_key[("io.containerd.metadata.v1", "sqlite")]
    assert dict(metadata.exports) == {"root": str(daemon.root), "state": str(daemon.state)}
    content = by_key[("io.containerd.content.v1", "content")]
    assert dict(content.exports) == {"root": str(daemon.root / "content")}


# -- Namespaces ---------------------------------------------------------------------------------


def test_namespace_lifecycle(chan: grpc.Channel, name: str) -> None:
    stub = nss(chan)
    created = stub.Create(
        namespaces_pb2.CreateNamespaceRequest(
            namespace=namespaces_pb2.Namespace(name=name, labels={"a": "1", "b": "2"})
        )
    ).namespace
    assert created.name == name
    assert dict(created.labels) == {"a": "1", "b": "2"}
    assert name in listed(chan)
    got = stub.Get(namespaces_pb2.GetNamespaceRequest(name=name)).namespace
    assert dict(got.labels) == {"a": "1", "b": "2"}

    # A label mask path sets one key (value from the request) and leaves the others.
    updated = stub.Update(
        namespaces_pb2.UpdateNamespaceRequest(
            namespace=namespaces_pb2.Namespace(name=name, labels={"a": "x", "c": "ignored"}),
            update_mask=FieldMask(paths=["labels.a"]),
        )
    ).namespace
    assert dict(updated.labels) == {"a": "x", "b": "2"}
    # A masked key absent from the request's labels is removed.
    updated = stub.Update(
        namespaces_pb2.UpdateNamespaceRequest(
            namespace=namespaces_pb2.Namespace(name=name, labels={}),
            update_mask=FieldMask(paths=["labels.b"]),
        )
    ).namespace
    assert dict(updated.labels) == {"a": "x"}
    # The key of a mask path may contain dots and slashes.
    key = "containerd.io/defaults/snapshotter"
    updated = stub.Update(
        namespaces_pb2.UpdateNamespaceRequest(
            namespace=namespaces_pb2.Namespace(name=name, labels={key: "overlayfs"}),
            update_mask=FieldMask(paths=[f"labels.{key}"]),
        )
    ).namespace
    assert dict(updated.labels) == {"a": "x", key: "overlayfs"}
    # No mask replaces all labels.
    updated = stub.Update(
        namespaces_pb2.UpdateNamespaceRequest(
            namespace=namespaces_pb2.Namespace(name=name, labels={"only": "this"})
        )
    ).namespace
    assert dict(updated.labels) == {"only": "this"}
    got = stub.Get(namespaces_pb2.GetNamespaceRequest(name=name)).namespace
    assert dict(got.labels) == {"only": "this"}
    assert (
        code_of(
            stub.Update,
            namespaces_pb2.UpdateNamespaceRequest(
                namespace=namespaces_pb2.Namespace(name=name, labels={}),
                update_mask=FieldMask(paths=["name"]),
            ),
        )
        == C.INVALID_ARGUMENT
    )

    # List filters on name and labels.
    found = stub.List(namespaces_pb2.ListNamespacesRequest(filter=f"name=={name}")).namespaces
    assert [n.name for n in found] == [name]
    found = stub.List(namespaces_pb2.ListNamespacesRequest(filter='labels."only"==this'))
    assert name in {n.name for n in found.namespaces}

    stub.Delete(namespaces_pb2.DeleteNamespaceRequest(name=name))
    assert name not in listed(chan)
    assert code_of(stub.Delete, namespaces_pb2.DeleteNamespaceRequest(name=name)) == C.NOT_FOUND


def test_namespace_get_unknown_answers_ok_and_creates_nothing(
    chan: grpc.Channel, name: str
) -> None:
    got = nss(chan).Get(namespaces_pb2.GetNamespaceRequest(name=name)).namespace
    assert got.name == name
    assert dict(got.labels) == {}
    assert name not in listed(chan)
    # Read-only calls in an unknown namespace create nothing either.
    assert not leases(chan).List(leases_pb2.ListRequest(), metadata=ns(name)).leases
    assert name not in listed(chan)


def test_namespace_create_duplicate(chan: grpc.Channel, name: str) -> None:
    req = namespaces_pb2.CreateNamespaceRequest(namespace=namespaces_pb2.Namespace(name=name))
    nss(chan).Create(req)
    assert code_of(nss(chan).Create, req) == C.ALREADY_EXISTS


def test_namespace_delete_unknown(chan: grpc.Channel, name: str) -> None:
    assert (
        code_of(nss(chan).Delete, namespaces_pb2.DeleteNamespaceRequest(name=name)) == C.NOT_FOUND
    )


@pytest.mark.parametrize("bad", ["", "has space", "-lead", "trail-", "a/b", "a..b", "x" * 77])
def test_namespace_invalid_names(chan: grpc.Channel, bad: str) -> None:
    stub = nss(chan)
    assert (
        code_of(
            stub.Create,
            namespaces_pb2.CreateNamespaceRequest(namespace=namespaces_pb2.Namespace(name=bad)),
        )
        == C.INVALID_ARGUMENT
    )
    assert code_of(stub.Get, namespaces_pb2.GetNamespaceRequest(name=bad)) == C.INVALID_ARGUMENT
    assert (
        code_of(stub.Delete, namespaces_pb2.DeleteNamespaceRequest(name=bad)) == C.INVALID_ARGUMENT
    )


def test_invalid_namespace_header(chan: grpc.Channel) -> None:
    assert (
        code_of(leases(chan).List, leases_pb2.ListRequest(), metadata=ns("bad/ns"))
        == C.INVALID_ARGUMENT
    )


def test_no_namespace_header(chan: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as info:
        leases(chan).List(leases_pb2.ListRequest())
    assert info.value.code() == C.FAILED_PRECONDITION
    assert "namespace is required" in info.value.details()
    content = content_pb2_grpc.ContentStub(chan)
    assert (
        code_of(content.Info, content_pb2.InfoRequest(digest="sha256:" + "0" * 64))
        == C.FAILED_PRECONDITION
    )
    assert code_of(lambda: list(content.List(content_pb2.ListContentRequest()))) == (
        C.FAILED_PRECONDITION
    )


def test_namespace_delete_refused_while_holding_blob(chan: grpc.Channel, name: str) -> None:
    digest = write_blob(chan, ns(name), b"blob that pins its namespace", {"keep": "me"})
    assert name in listed(chan)
    stub = nss(chan)
    with pytest.raises(grpc.RpcError) as info:
        stub.Delete(namespaces_pb2.DeleteNamespaceRequest(name=name))
    assert info.value.code() == C.FAILED_PRECONDITION
    assert name in listed(chan)
    content = content_pb2_grpc.ContentStub(chan)
    kept = content.Info(content_pb2.InfoRequest(digest=digest), metadata=ns(name)).info
    assert dict(kept.labels) == {ROOT: "test", "keep": "me"}
    # Emptied, it goes.
    content.Delete(content_pb2.DeleteContentRequest(digest=digest), metadata=ns(name))
    stub.Delete(namespaces_pb2.DeleteNamespaceRequest(name=name))
    assert name not in listed(chan)


def test_namespace_delete_refused_while_holding_lease(chan: grpc.Channel, name: str) -> None:
    leases(chan).Create(leases_pb2.CreateRequest(id="pin"), metadata=ns(name))
    assert name in listed(chan)
    assert (
        code_of(nss(chan).Delete, namespaces_pb2.DeleteNamespaceRequest(name=name))
        == C.FAILED_PRECONDITION
    )
    assert [
        lease.id for lease in leases(chan).List(leases_pb2.ListRequest(), metadata=ns(name)).leases
    ] == ["pin"]
    leases(chan).Delete(leases_pb2.DeleteRequest(id="pin"), metadata=ns(name))
    nss(chan).Delete(namespaces_pb2.DeleteNamespaceRequest(name=name))
    assert name not in listed(chan)


def test_namespace_delete_refused_while_holding_ingest(chan: grpc.Channel, name: str) -> None:
    content = content_pb2_grpc.ContentStub(chan)
    reqs = [
        content_pb2.WriteContentRequest(action=STAT, ref="partial", total=10),
        content_pb2.WriteContentRequest(action=WRITE, data=b"12345"),
    ]
    list(content.Write(iter(reqs), metadata=ns(name)))
    # A write is a mutating call: the namespace exists from then on.
    assert name in listed(chan)
    assert (
        code_of(nss(chan).Delete, namespaces_pb2.DeleteNamespaceRequest(name=name))
        == C.FAILED_PRECONDITION
    )
    status = content.Status(content_pb2.StatusRequest(ref="partial"), metadata=ns(name)).status
    assert status.offset == 5
    content.Abort(content_pb2.AbortRequest(ref="partial"), metadata=ns(name))
    nss(chan).Delete(namespaces_pb2.DeleteNamespaceRequest(name=name))
    assert name not in listed(chan)


# -- Leases -------------------------------------------------------------------------------------


def test_lease_create_list_delete(chan: grpc.Channel, name: str) -> None:
    stub, md = leases(chan), ns(name)
    lease = stub.Create(leases_pb2.CreateRequest(id="l1", labels={"a": "b"}), metadata=md).lease
    assert lease.id == "l1"
    assert dict(lease.labels) == {"a": "b"}
    assert lease.created_at.seconds > 0
    generated = stub.Create(leases_pb2.CreateRequest(), metadata=md).lease
    assert generated.id and generated.id != "l1"
    assert generated.created_at.seconds > 0

    assert code_of(stub.Create, leases_pb2.CreateRequest(id="l1"), metadata=md) == C.ALREADY_EXISTS
    # containerd takes any non-empty id (ctr 1.6 names a mount's lease after its path).
    path_like = stub.Create(leases_pb2.CreateRequest(id="/tmp/m"), metadata=md).lease
    assert path_like.id == "/tmp/m"
    stub.Delete(leases_pb2.DeleteRequest(id="/tmp/m"), metadata=md)

    ids = {x.id for x in stub.List(leases_pb2.ListRequest(), metadata=md).leases}
    assert ids == {"l1", generated.id}
    by_id = stub.List(leases_pb2.ListRequest(filters=["id==l1"]), metadata=md).leases
    assert [x.id for x in by_id] == ["l1"]
    by_label = stub.List(leases_pb2.ListRequest(filters=['labels."a"==b']), metadata=md).leases
    assert [x.id for x in by_label] == ["l1"]
    assert not stub.List(leases_pb2.ListRequest(filters=['labels."a"==c']), metadata=md).leases
    # Several filter strings are ORed.
    either = stub.List(
        leases_pb2.ListRequest(filters=["id==l1", f"id=={generated.id}"]), metadata=md
    ).leases
    assert len(either) == 2
    # Leases are per namespace.
    assert not stub.List(leases_pb2.ListRequest(), metadata=ns(name + "-other")).leases

    stub.Delete(leases_pb2.DeleteRequest(id="l1"), metadata=md)
    assert code_of(stub.Delete, leases_pb2.DeleteRequest(id="l1"), metadata=md) == C.NOT_FOUND
    assert code_of(stub.Delete, leases_pb2.DeleteRequest(id="never"), metadata=md) == C.NOT_FOUND
    stub.Delete(leases_pb2.DeleteRequest(id=generated.id, sync=True), metadata=md)
    assert not stub.List(leases_pb2.ListRequest(), metadata=md).leases


def test_lease_resources(chan: grpc.Channel, name: str) -> None:
    stub, md = leases(chan), ns(name)
    stub.Create(leases_pb2.CreateRequest(id="res"), metadata=md)
    digest = "sha256:" + "ab" * 32
    resources = [
        leases_pb2.Resource(id=digest, type="content"),
        leases_pb2.Resource(id="layer-sha256:123", type="ingests"),
        leases_pb2.Resource(id="snap-key", type="snapshots/overlayfs"),
    ]
    for r in resources:
        stub.AddResource(leases_pb2.AddResourceRequest(id="res", resource=r), metadata=md)
    # Adding twice is harmless.
    stub.AddResource(leases_pb2.AddResourceRequest(id="res", resource=resources[0]), metadata=md)

    def held() -> set[tuple[str, str]]:
        got = stub.ListResources(leases_pb2.ListResourcesRequest(id="res"), metadata=md)
        return {(r.type, r.id) for r in got.resources}

    assert held() == {(r.type, r.id) for r in resources}
    stub.DeleteResource(
        leases_pb2.DeleteResourceRequest(id="res", resource=resources[1]), metadata=md
    )
    assert held() == {("content", digest), ("snapshots/overlayfs", "snap-key")}

    for bad in [
        leases_pb2.Resource(id="x", type="bogus"),
        leases_pb2.Resource(id="x", type="snapshots/"),
        leases_pb2.Resource(id="not-a-digest", type="content"),
        leases_pb2.Resource(id="", type="ingests"),
    ]:
        assert (
            code_of(
                stub.AddResource, leases_pb2.AddResourceRequest(id="res", resource=bad), metadata=md
            )
            == C.INVALID_ARGUMENT
        )
    assert held() == {("content", digest), ("snapshots/overlayfs", "snap-key")}

    for call, req in [
        (stub.AddResource, leases_pb2.AddResourceRequest(id="nope", resource=resources[0])),
        (stub.DeleteResource, leases_pb2.DeleteResourceRequest(id="nope", resource=resources[0])),
        (stub.ListResources, leases_pb2.ListResourcesRequest(id="nope")),
    ]:
        assert code_of(call, req, metadata=md) == C.NOT_FOUND
    stub.Delete(leases_pb2.DeleteRequest(id="res"), metadata=md)


# -- Events -------------------------------------------------------------------------------------


class Subscription:
    """Events/Subscribe read on a thread; `ready` publishes a marker until it arrives."""

    def __init__(self, ch: grpc.Channel, filters: list[str], marker_ns: str) -> None:
        self.events: queue.Queue[events_pb2.Envelope] = queue.Queue()
        self.marker_ns = marker_ns
        self._pub = events_pb2_grpc.EventsStub(ch)
        self._call = self._pub.Subscribe(
            events_pb2.SubscribeRequest(filters=filters), metadata=ns(marker_ns)
        )
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        try:
            for envelope in self._call:
                self.events.put(envelope)
        except grpc.RpcError:
            pass

    def ready(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._pub.Publish(
                events_pb2.PublishRequest(
                    topic=MARKER, event=AnyPb(type_url="test.Marker", value=b"")
                ),
                metadata=ns(self.marker_ns),
            )
            try:
                envelope = self.events.get(timeout=0.1)
            except queue.Empty:
                continue
            assert envelope.topic == MARKER
            self.drain()
            return
        raise AssertionError("subscription never delivered the marker")

    def drain(self) -> None:
        time.sleep(0.1)
        while not self.events.empty():
            self.events.get_nowait()

    def next(self, timeout: float = 5.0) -> events_pb2.Envelope:
        """The next event that is not a marker."""
        while True:
            envelope = self.events.get(timeout=timeout)
            if envelope.topic != MARKER:
                return envelope

    def collect(self, count: int, timeout: float = 5.0) -> list[events_pb2.Envelope]:
        return [self.next(timeout) for _ in range(count)]

    def close(self) -> None:
        self._call.cancel()
        self._thread.join(5)


@pytest.fixture
def subscribe(chan: grpc.Channel, name: str):
    subs: list[Subscription] = []

    def make(filters: list[str] | None = None) -> Subscription:
        # Filter strings are ORed: the marker always gets through.
        wanted = [*filters, f'topic=="{MARKER}"'] if filters else []
        sub = Subscription(chan, wanted, name + "-events")
        subs.append(sub)
        sub.ready()
        return sub

    yield make
    for sub in subs:
        sub.close()


def test_events_namespace_topics(chan: grpc.Channel, name: str, subscribe) -> None:
    sub = subscribe([f"namespace=={name}"])
    stub = nss(chan)
    stub.Create(
        namespaces_pb2.CreateNamespaceRequest(
            namespace=namespaces_pb2.Namespace(name=name, labels={"k": "v"})
        )
    )
    stub.Update(
        namespaces_pb2.UpdateNamespaceRequest(
            namespace=namespaces_pb2.Namespace(name=name, labels={"k": "w"})
        )
    )
    stub.Delete(namespaces_pb2.DeleteNamespaceRequest(name=name))
    create, update, delete = sub.collect(3)

    assert create.topic == "/namespaces/create"
    assert create.namespace == name
    assert create.timestamp.seconds > 0
    assert create.event.type_url == "containerd.events.NamespaceCreate"
    payload = ns_events_pb2.NamespaceCreate.FromString(create.event.value)
    assert payload.name == name
    assert dict(payload.labels) == {"k": "v"}

    assert update.topic == "/namespaces/update"
    assert update.event.type_url == "containerd.events.NamespaceUpdate"
    assert dict(ns_events_pb2.NamespaceUpdate.FromString(update.event.value).labels) == {"k": "w"}

    assert delete.topic == "/namespaces/delete"
    assert delete.event.type_url == "containerd.events.NamespaceDelete"
    assert ns_events_pb2.NamespaceDelete.FromString(delete.event.value).name == name


def test_events_content_delete(chan: grpc.Channel, name: str, subscribe) -> None:
    sub = subscribe([f'namespace=={name},topic=="/content/delete"'])
    digest = write_blob(chan, ns(name), b"soon deleted")
    content_pb2_grpc.ContentStub(chan).Delete(
        content_pb2.DeleteContentRequest(digest=digest), metadata=ns(name)
    )
    envelope = sub.next()
    assert envelope.topic == "/content/delete"
    assert envelope.event.type_url == "containerd.events.ContentDelete"


def test_events_publish_forward_and_topic_filter(chan: grpc.Channel, name: str, subscribe) -> None:
    everything = subscribe()
    creates = subscribe(['topic=="/containers/create"'])
    stub = events_pb2_grpc.EventsStub(chan)
    event = AnyPb(type_url="containerd.events.ContainerCreate", value=b"\n\x02c1")
    stub.Publish(
        events_pb2.PublishRequest(topic="/containers/create", event=event), metadata=ns(name)
    )
    other = AnyPb(type_url="containerd.events.ContainerDelete", value=b"\n\x02c1")
    stub.Publish(
        events_pb2.PublishRequest(topic="/containers/delete", event=other), metadata=ns(name)
    )
    forwarded = events_pb2.Envelope(
        namespace=name + "-fwd", topic="/containers/create", event=event
    )
    forwarded.timestamp.GetCurrentTime()
    stub.Forward(events_pb2.ForwardRequest(envelope=forwarded), metadata=ns(name))

    first, second, third = everything.collect(3)
    assert (first.namespace, first.topic) == (name, "/containers/create")
    assert first.event == event
    assert (second.namespace, second.topic) == (name, "/containers/delete")
    assert second.event == other
    assert (third.namespace, third.topic) == (name + "-fwd", "/containers/create")
    assert third.event == event

    got = creates.collect(2)
    assert [(e.namespace, e.topic) for e in got] == [
        (name, "/containers/create"),
        (name + "-fwd", "/containers/create"),
    ]
    with pytest.raises(queue.Empty):
        creates.next(timeout=0.3)

    for bad in ["no-slash", "", "/"]:
        assert (
            code_of(
                stub.Publish, events_pb2.PublishRequest(topic=bad, event=event), metadata=ns(name)
            )
            == C.INVALID_ARGUMENT
        )
    assert (
        code_of(
            stub.Publish,
            events_pb2.PublishRequest(topic="/x", event=AnyPb()),
            metadata=ns(name),
        )
        == C.INVALID_ARGUMENT
    )
    bad_ns = events_pb2.Envelope(namespace="bad ns", topic="/x", event=event)
    assert (
        code_of(stub.Forward, events_pb2.ForwardRequest(envelope=bad_ns), metadata=ns(name))
        == C.INVALID_ARGUMENT
    )


def test_bad_filters_are_invalid_argument(chan: grpc.Channel) -> None:
    for bad in ["topic==", "id=", 'labels."a']:
        assert (
            code_of(leases(chan).List, leases_pb2.ListRequest(filters=[bad]), metadata=ns("x"))
            == C.INVALID_ARGUMENT
        )


def test_events_bad_filter(chan: grpc.Channel) -> None:
    call = events_pb2_grpc.EventsStub(chan).Subscribe(
        events_pb2.SubscribeRequest(filters=["topic=="]), metadata=ns("default")
    )
    assert code_of(lambda: next(call)) == C.INVALID_ARGUMENT
