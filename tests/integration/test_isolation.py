"""Namespace isolation, socket access and secrets in logs, against one real linerd.

Two namespaces share a daemon. For every service, what namespace A made is invisible to B and
cannot be touched from it: B's calls naming A's objects answer NOT_FOUND and leave them as they
were; B can make objects with the same names, which stay independent of A's. An events
subscriber filtered on B's namespace never sees A's events.

Access: the socket is mode 0660 and owned by the group `[grpc] gid` names. Secrets: at debug
level, neither a registry password (nor its base64 form) nor any bearer token reaches the log
during authenticated pulls (basic auth and token auth, credentials from the request and from the
config).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import queue
import re
import shutil
import signal
import stat
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.any_pb2 import Any as AnyPb
from google.protobuf.field_mask_pb2 import FieldMask
from imagebuild import BusyboxLayout
from registry import Registry
from support import Linerd, ns

from liner_api.containerd.services.containers.v1 import containers_pb2, containers_pb2_grpc
from liner_api.containerd.services.content.v1 import content_pb2, content_pb2_grpc
from liner_api.containerd.services.events.v1 import events_pb2, events_pb2_grpc
from liner_api.containerd.services.images.v1 import images_pb2, images_pb2_grpc
from liner_api.containerd.services.leases.v1 import leases_pb2, leases_pb2_grpc
from liner_api.containerd.services.snapshots.v1 import snapshots_pb2, snapshots_pb2_grpc
from liner_api.containerd.services.tasks.v1 import tasks_pb2, tasks_pb2_grpc
from liner_api.containerd.types import descriptor_pb2
from liner_api.containerd.types.task import task_pb2
from liner_api.liner.services.transfer.v1 import transfer_pb2, transfer_pb2_grpc
from liner_common import ocispec

pytestmark = pytest.mark.integration

A, B = "iso-a", "iso-b"
GID = 4242  # need not exist in /etc/group: the socket just gets this numeric group
ROOT = "containerd.io/gc.root"
SPEC_URL = "types.containerd.io/opencontainers/runtime-spec/1/Spec"
PROCESS_URL = "types.containerd.io/opencontainers/runtime-spec/1/Process"
STAT = content_pb2.WriteAction.Value("STAT")
WRITE = content_pb2.WriteAction.Value("WRITE")
COMMIT = content_pb2.WriteAction.Value("COMMIT")
SNAP = "overlayfs"
MARKER = "/test/marker"
C = grpc.StatusCode

needs_runtime = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("conmon") or not shutil.which("runc"),
    reason="needs root, conmon and runc",
)


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def chain_id(layout: BusyboxLayout) -> str:
    chain = ""
    for layer in layout.latest.layers:
        chain = (
            layer.diff_id
            if not chain
            else "sha256:" + hashlib.sha256(f"{chain} {layer.diff_id}".encode()).hexdigest()
        )
    return chain


def pull(daemon: Linerd, ref: str, namespace: str, **fields: Any) -> transfer_pb2.PullProgress:
    with daemon.channel() as ch:
        req = transfer_pb2.PullRequest(reference=ref, plain_http=True, **fields)
        stub = transfer_pb2_grpc.TransferStub(ch)
        last = list(stub.Pull(req, metadata=ns(namespace), timeout=120))[-1]
    assert last.done, last
    return last


def not_found(call: Callable[[], Any]) -> str:
    """`call` (unary, or a stream drained here) fails NOT_FOUND; returns the details."""
    with pytest.raises(grpc.RpcError) as info:
        result = call()
        if hasattr(result, "__iter__") and not isinstance(result, (bytes, str)):
            list(result)
    assert info.value.code() == C.NOT_FOUND, (info.value.code(), info.value.details())
    return info.value.details() or ""


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, registry: Registry) -> Iterator[Linerd]:
    base = tmp_path_factory.mktemp("isolation")
    config = base / "config.toml"
    config.write_text(f"version = 1\n\n[grpc]\ngid = {GID}\n")
    d = Linerd(base, ["--config", str(config)])
    d.start()
    try:
        for space in (A, B):
            pull(d, registry.ref("library/busybox:latest"), space)
        yield d
    finally:
        d.stop()


@pytest.fixture(scope="module")
def chan(daemon: Linerd) -> Iterator[grpc.Channel]:
    with daemon.channel() as ch:
        yield ch


# ---------------------------------------------------------------------------- access


def test_socket_mode_and_group(daemon: Linerd) -> None:
    st = os.stat(daemon.address)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o660
    assert st.st_gid == GID


# ---------------------------------------------------------------------------- content


class Content:
    def __init__(self, ch: grpc.Channel, space: str) -> None:
        self.stub = content_pb2_grpc.ContentStub(ch)
        self.md = ns(space)

    def write(self, ref: str, data: bytes, *, commit: bool = True) -> Any:
        """One Write call: STAT, WRITE all of `data`, COMMIT (labelled a GC root) if asked."""
        reqs = [
            content_pb2.WriteContentRequest(action=STAT, ref=ref),
            content_pb2.WriteContentRequest(action=WRITE, ref=ref, offset=0, data=data),
        ]
        if commit:
            reqs.append(
                content_pb2.WriteContentRequest(
                    action=COMMIT,
                    ref=ref,
                    offset=len(data),
                    total=len(data),
                    expected=sha(data),
                    labels={ROOT: "isolation"},
                )
            )
        return list(self.stub.Write(iter(reqs), metadata=self.md))

    def info(self, digest: str) -> content_pb2.Info:
        return self.stub.Info(content_pb2.InfoRequest(digest=digest), metadata=self.md).info

    def read(self, digest: str) -> Any:
        return self.stub.Read(content_pb2.ReadContentRequest(digest=digest), metadata=self.md)

    def update(self, digest: str) -> Any:
        info = content_pb2.Info(digest=digest, labels={"stolen": "yes"})
        req = content_pb2.UpdateRequest(info=info, update_mask=FieldMask(paths=["labels"]))
        return self.stub.Update(req, metadata=self.md)

    def delete(self, digest: str) -> Any:
        return self.stub.Delete(content_pb2.DeleteContentRequest(digest=digest), metadata=self.md)

    def digests(self) -> set[str]:
        req = content_pb2.ListContentRequest()
        return {i.digest for r in self.stub.List(req, metadata=self.md) for i in r.info}

    def status(self, ref: str) -> content_pb2.Status:
        return self.stub.Status(content_pb2.StatusRequest(ref=ref), metadata=self.md).status

    def refs(self) -> set[str]:
        req = content_pb2.ListStatusesRequest()
        return {s.ref for s in self.stub.ListStatuses(req, metadata=self.md).statuses}

    def abort(self, ref: str) -> Any:
        return self.stub.Abort(content_pb2.AbortRequest(ref=ref), metadata=self.md)


def test_content(chan: grpc.Channel) -> None:
    a, b = Content(chan, A), Content(chan, B)
    tag = uuid.uuid4().hex[:8]
    data = f"A's blob {tag}".encode()
    digest = sha(data)
    ingest = f"iso-ingest-{tag}"
    a.write(f"blob-{tag}", data)
    a.write(ingest, b"partial", commit=False)
    assert a.status(ingest).offset == 7
    info = a.info(digest)

    not_found(lambda: b.info(digest))
    not_found(lambda: b.read(digest))
    not_found(lambda: b.update(digest))
    not_found(lambda: b.delete(digest))
    assert digest not in b.digests()
    not_found(lambda: b.status(ingest))
    assert ingest not in b.refs()
    not_found(lambda: b.abort(ingest))

    # A's blob and ingest are as they were.
    assert a.info(digest) == info and "stolen" not in a.info(digest).labels
    assert b"".join(r.data for r in a.read(digest)) == data
    assert a.status(ingest).offset == 7
    assert ingest in a.refs() and digest in a.digests()

    # B's ingest of the same name starts empty and is its own.
    first = b.write(ingest, b"", commit=False)[0]
    assert first.offset == 0
    other = f"B's blob {tag}".encode()
    resp = b.write(ingest, other)
    assert resp[-1].digest == sha(other)
    assert a.status(ingest).offset == 7
    not_found(lambda: a.info(sha(other)))
    not_found(lambda: b.status(ingest))  # committed in B; A's stays

    a.abort(ingest)
    not_found(lambda: a.status(ingest))
    a.delete(digest)
    b.delete(sha(other))


# ---------------------------------------------------------------------------- images


def test_images(chan: grpc.Channel) -> None:
    stub = images_pb2_grpc.ImagesStub(chan)
    ca, cb = Content(chan, A), Content(chan, B)
    tag = uuid.uuid4().hex[:8]
    name = f"iso.test/image:{tag}"
    targets = {}
    for space, content in ((A, ca), (B, cb)):
        data = json.dumps({"space": space, "tag": tag}).encode()
        content.write(f"img-{space}-{tag}", data)
        targets[space] = descriptor_pb2.Descriptor(
            media_type="application/vnd.oci.image.manifest.v1+json",
            digest=sha(data),
            size=len(data),
        )
    stub.Create(
        images_pb2.CreateImageRequest(
            image=images_pb2.Image(name=name, target=targets[A], labels={"owner": "a"})
        ),
        metadata=ns(A),
    )
    mb = ns(B)
    not_found(lambda: stub.Get(images_pb2.GetImageRequest(name=name), metadata=mb))
    assert name not in {
        i.name for i in stub.List(images_pb2.ListImagesRequest(), metadata=mb).images
    }
    not_found(
        lambda: stub.Update(
            images_pb2.UpdateImageRequest(
                image=images_pb2.Image(name=name, target=targets[B], labels={"owner": "b"})
            ),
            metadata=mb,
        )
    )
    not_found(lambda: stub.Delete(images_pb2.DeleteImageRequest(name=name), metadata=mb))
    got = stub.Get(images_pb2.GetImageRequest(name=name), metadata=ns(A)).image
    assert (got.target.digest, dict(got.labels)) == (targets[A].digest, {"owner": "a"})

    # The same name in B is B's own image.
    stub.Create(
        images_pb2.CreateImageRequest(
            image=images_pb2.Image(name=name, target=targets[B], labels={"owner": "b"})
        ),
        metadata=mb,
    )
    assert stub.Get(images_pb2.GetImageRequest(name=name), metadata=mb).image.target == targets[B]
    stub.Delete(images_pb2.DeleteImageRequest(name=name), metadata=mb)
    got = stub.Get(images_pb2.GetImageRequest(name=name), metadata=ns(A)).image
    assert got.target == targets[A]
    stub.Delete(images_pb2.DeleteImageRequest(name=name), metadata=ns(A))
    for space, content in ((A, ca), (B, cb)):
        content.delete(targets[space].digest)


# ---------------------------------------------------------------------------- leases


def test_leases(chan: grpc.Channel) -> None:
    stub = leases_pb2_grpc.LeasesStub(chan)
    lease = f"iso-lease-{uuid.uuid4().hex[:8]}"
    ma, mb = ns(A), ns(B)
    res_a = leases_pb2.Resource(id=sha(b"a-resource"), type="content")
    res_b = leases_pb2.Resource(id=sha(b"b-resource"), type="content")
    stub.Create(leases_pb2.CreateRequest(id=lease, labels={"owner": "a"}), metadata=ma)
    stub.AddResource(leases_pb2.AddResourceRequest(id=lease, resource=res_a), metadata=ma)

    assert lease not in {x.id for x in stub.List(leases_pb2.ListRequest(), metadata=mb).leases}
    not_found(lambda: stub.Delete(leases_pb2.DeleteRequest(id=lease), metadata=mb))
    not_found(
        lambda: stub.AddResource(
            leases_pb2.AddResourceRequest(id=lease, resource=res_b), metadata=mb
        )
    )
    not_found(lambda: stub.ListResources(leases_pb2.ListResourcesRequest(id=lease), metadata=mb))
    not_found(
        lambda: stub.DeleteResource(
            leases_pb2.DeleteResourceRequest(id=lease, resource=res_a), metadata=mb
        )
    )

    def resources(md: list[tuple[str, str]]) -> list[tuple[str, str]]:
        req = leases_pb2.ListResourcesRequest(id=lease)
        return [(r.id, r.type) for r in stub.ListResources(req, metadata=md).resources]

    assert resources(ma) == [(res_a.id, "content")]
    # The same lease id in B is B's own.
    stub.Create(leases_pb2.CreateRequest(id=lease, labels={"owner": "b"}), metadata=mb)
    stub.AddResource(leases_pb2.AddResourceRequest(id=lease, resource=res_b), metadata=mb)
    assert resources(mb) == [(res_b.id, "content")]
    stub.Delete(leases_pb2.DeleteRequest(id=lease), metadata=mb)
    assert resources(ma) == [(res_a.id, "content")]
    listed = {x.id: dict(x.labels) for x in stub.List(leases_pb2.ListRequest(), metadata=ma).leases}
    assert listed[lease] == {"owner": "a"}
    stub.Delete(leases_pb2.DeleteRequest(id=lease), metadata=ma)


# ---------------------------------------------------------------------------- snapshots


def test_snapshots(chan: grpc.Channel) -> None:
    stub = snapshots_pb2_grpc.SnapshotsStub(chan)
    ma, mb = ns(A), ns(B)
    tag = uuid.uuid4().hex[:8]
    active, tocommit, committed = f"iso-active-{tag}", f"iso-pre-{tag}", f"iso-done-{tag}"
    labels = {ROOT: "isolation"}
    mounts_a = stub.Prepare(
        snapshots_pb2.PrepareSnapshotRequest(snapshotter=SNAP, key=active, labels=labels),
        metadata=ma,
    ).mounts
    stub.Prepare(
        snapshots_pb2.PrepareSnapshotRequest(snapshotter=SNAP, key=tocommit, labels=labels),
        metadata=ma,
    )
    stub.Commit(
        snapshots_pb2.CommitSnapshotRequest(
            snapshotter=SNAP, name=committed, key=tocommit, labels=labels
        ),
        metadata=ma,
    )
    before = {
        k: stub.Stat(snapshots_pb2.StatSnapshotRequest(snapshotter=SNAP, key=k), metadata=ma).info
        for k in (active, committed)
    }

    for key in (active, committed):
        not_found(
            lambda k=key: stub.Stat(
                snapshots_pb2.StatSnapshotRequest(snapshotter=SNAP, key=k), metadata=mb
            )
        )
        not_found(
            lambda k=key: stub.Usage(
                snapshots_pb2.UsageRequest(snapshotter=SNAP, key=k), metadata=mb
            )
        )
        not_found(
            lambda k=key: stub.Remove(
                snapshots_pb2.RemoveSnapshotRequest(snapshotter=SNAP, key=k), metadata=mb
            )
        )
        not_found(
            lambda k=key: stub.Update(
                snapshots_pb2.UpdateSnapshotRequest(
                    snapshotter=SNAP,
                    info=snapshots_pb2.Info(name=k, labels={"stolen": "yes"}),
                    update_mask=FieldMask(paths=["labels"]),
                ),
                metadata=mb,
            )
        )
    not_found(
        lambda: stub.Mounts(snapshots_pb2.MountsRequest(snapshotter=SNAP, key=active), metadata=mb)
    )
    not_found(
        lambda: stub.Commit(
            snapshots_pb2.CommitSnapshotRequest(snapshotter=SNAP, name=f"x-{tag}", key=active),
            metadata=mb,
        )
    )
    # A's committed snapshot is no parent B can build on.
    not_found(
        lambda: stub.Prepare(
            snapshots_pb2.PrepareSnapshotRequest(
                snapshotter=SNAP, key=f"child-{tag}", parent=committed
            ),
            metadata=mb,
        )
    )
    not_found(
        lambda: stub.View(
            snapshots_pb2.ViewSnapshotRequest(
                snapshotter=SNAP, key=f"view-{tag}", parent=committed
            ),
            metadata=mb,
        )
    )
    listed_b = {
        i.name
        for r in stub.List(snapshots_pb2.ListSnapshotsRequest(snapshotter=SNAP), metadata=mb)
        for i in r.info
    }
    assert not {active, committed, f"child-{tag}", f"view-{tag}"} & listed_b

    # A's snapshots are untouched.
    for k, info in before.items():
        now = stub.Stat(snapshots_pb2.StatSnapshotRequest(snapshotter=SNAP, key=k), metadata=ma)
        assert now.info == info and "stolen" not in now.info.labels
    again = stub.Mounts(snapshots_pb2.MountsRequest(snapshotter=SNAP, key=active), metadata=ma)
    assert list(again.mounts) == list(mounts_a)

    # The same key in B is B's own snapshot, on other storage.
    mounts_b = stub.Prepare(
        snapshots_pb2.PrepareSnapshotRequest(snapshotter=SNAP, key=active, labels=labels),
        metadata=mb,
    ).mounts
    assert list(mounts_b) != list(mounts_a)
    stub.Remove(snapshots_pb2.RemoveSnapshotRequest(snapshotter=SNAP, key=active), metadata=mb)
    stub.Stat(snapshots_pb2.StatSnapshotRequest(snapshotter=SNAP, key=active), metadata=ma)
    for k in (active, committed):
        stub.Remove(snapshots_pb2.RemoveSnapshotRequest(snapshotter=SNAP, key=k), metadata=ma)


# ---------------------------------------------------------------------------- containers


def container_msg(cid: str, space: str, image: str, **kw: Any) -> containers_pb2.Container:
    spec = ocispec.generate(space, cid, [ocispec.with_args(["sleep", "300"])])
    return containers_pb2.Container(
        id=cid,
        image=image,
        labels={"owner": space},
        runtime=containers_pb2.Container.Runtime(name="io.containerd.runc.v2"),
        spec=AnyPb(type_url=SPEC_URL, value=json.dumps(spec).encode()),
        **kw,
    )


def test_containers(chan: grpc.Channel) -> None:
    stub = containers_pb2_grpc.ContainersStub(chan)
    ma, mb = ns(A), ns(B)
    cid = f"iso-c-{uuid.uuid4().hex[:8]}"
    stub.Create(
        containers_pb2.CreateContainerRequest(container=container_msg(cid, A, "a/image:1")),
        metadata=ma,
    )
    not_found(lambda: stub.Get(containers_pb2.GetContainerRequest(id=cid), metadata=mb))
    listed = stub.List(containers_pb2.ListContainersRequest(), metadata=mb).containers
    assert cid not in {c.id for c in listed}
    not_found(
        lambda: stub.Update(
            containers_pb2.UpdateContainerRequest(
                container=containers_pb2.Container(id=cid, labels={"owner": "b"}),
                update_mask=FieldMask(paths=["labels"]),
            ),
            metadata=mb,
        )
    )
    not_found(lambda: stub.Delete(containers_pb2.DeleteContainerRequest(id=cid), metadata=mb))
    got = stub.Get(containers_pb2.GetContainerRequest(id=cid), metadata=ma).container
    assert (got.image, dict(got.labels)) == ("a/image:1", {"owner": A})

    stub.Create(
        containers_pb2.CreateContainerRequest(container=container_msg(cid, B, "b/image:1")),
        metadata=mb,
    )
    assert stub.Get(containers_pb2.GetContainerRequest(id=cid), metadata=mb).container.image == (
        "b/image:1"
    )
    stub.Delete(containers_pb2.DeleteContainerRequest(id=cid), metadata=mb)
    got = stub.Get(containers_pb2.GetContainerRequest(id=cid), metadata=ma).container
    assert got.image == "a/image:1"
    stub.Delete(containers_pb2.DeleteContainerRequest(id=cid), metadata=ma)


# ---------------------------------------------------------------------------- tasks


class Space:
    """Containers and tasks of one namespace, made as ctr makes them."""

    def __init__(self, ch: grpc.Channel, space: str, parent: str) -> None:
        self.space = space
        self.md = ns(space)
        self.parent = parent
        self.tasks = tasks_pb2_grpc.TasksStub(ch)
        self.containers = containers_pb2_grpc.ContainersStub(ch)
        self.snapshots = snapshots_pb2_grpc.SnapshotsStub(ch)
        self.leases = leases_pb2_grpc.LeasesStub(ch)

    def run(self, cid: str, args: list[str]) -> int:
        lease = self.leases.Create(leases_pb2.CreateRequest(), metadata=self.md).lease.id
        md = ns(self.space, lease)
        try:
            mounts = self.snapshots.Prepare(
                snapshots_pb2.PrepareSnapshotRequest(snapshotter=SNAP, key=cid, parent=self.parent),
                metadata=md,
            ).mounts
            c = container_msg(cid, self.space, "busybox", snapshotter=SNAP, snapshot_key=cid)
            c.spec.value = json.dumps(
                ocispec.generate(self.space, cid, [ocispec.with_args(args)])
            ).encode()
            self.containers.Create(containers_pb2.CreateContainerRequest(container=c), metadata=md)
        finally:
            self.leases.Delete(leases_pb2.DeleteRequest(id=lease), metadata=self.md)
        self.tasks.Create(
            tasks_pb2.CreateTaskRequest(container_id=cid, rootfs=mounts), metadata=self.md
        )
        return self.tasks.Start(tasks_pb2.StartRequest(container_id=cid), metadata=self.md).pid

    def get(self, cid: str) -> task_pb2.Process:
        return self.tasks.Get(tasks_pb2.GetRequest(container_id=cid), metadata=self.md).process

    def remove(self, cid: str) -> None:
        with contextlib.suppress(grpc.RpcError):
            self.tasks.Kill(
                tasks_pb2.KillRequest(container_id=cid, signal=signal.SIGKILL, all=True),
                metadata=self.md,
            )
        with contextlib.suppress(grpc.RpcError):
            self.tasks.Wait(tasks_pb2.WaitRequest(container_id=cid), metadata=self.md, timeout=20)
        with contextlib.suppress(grpc.RpcError):
            self.tasks.Delete(tasks_pb2.DeleteTaskRequest(container_id=cid), metadata=self.md)
        for call in (
            lambda: self.snapshots.Remove(
                snapshots_pb2.RemoveSnapshotRequest(snapshotter=SNAP, key=cid), metadata=self.md
            ),
            lambda: self.containers.Delete(
                containers_pb2.DeleteContainerRequest(id=cid), metadata=self.md
            ),
        ):
            with contextlib.suppress(grpc.RpcError):
                call()


@needs_runtime
def test_tasks(chan: grpc.Channel, busybox_layout: BusyboxLayout) -> None:
    parent = chain_id(busybox_layout)
    a, b = Space(chan, A, parent), Space(chan, B, parent)
    cid = f"iso-t-{uuid.uuid4().hex[:8]}"
    try:
        pid = a.run(cid, ["sleep", "300"])
        t, mb = b.tasks, b.md
        process = json.dumps(ocispec.generate(B, cid, [ocispec.with_args(["true"])])["process"])
        calls: dict[str, Callable[[], Any]] = {
            "Get": lambda: t.Get(tasks_pb2.GetRequest(container_id=cid), metadata=mb),
            "Kill": lambda: t.Kill(
                tasks_pb2.KillRequest(container_id=cid, signal=signal.SIGKILL, all=True),
                metadata=mb,
            ),
            "Delete": lambda: t.Delete(tasks_pb2.DeleteTaskRequest(container_id=cid), metadata=mb),
            "Exec": lambda: t.Exec(
                tasks_pb2.ExecProcessRequest(
                    container_id=cid,
                    exec_id="intruder",
                    spec=AnyPb(type_url=PROCESS_URL, value=process.encode()),
                ),
                metadata=mb,
            ),
            "Wait": lambda: t.Wait(
                tasks_pb2.WaitRequest(container_id=cid), metadata=mb, timeout=10
            ),
            "Start": lambda: t.Start(tasks_pb2.StartRequest(container_id=cid), metadata=mb),
            "Pause": lambda: t.Pause(tasks_pb2.PauseTaskRequest(container_id=cid), metadata=mb),
            "ListPids": lambda: t.ListPids(
                tasks_pb2.ListPidsRequest(container_id=cid), metadata=mb
            ),
            "Create": lambda: t.Create(tasks_pb2.CreateTaskRequest(container_id=cid), metadata=mb),
        }
        for name, call in calls.items():
            started = time.monotonic()
            not_found(call)
            assert time.monotonic() - started < 5, f"{name} from B took too long"
        listed = t.List(tasks_pb2.ListTasksRequest(), metadata=mb).tasks
        assert cid not in {x.id for x in listed}

        got = a.get(cid)
        assert (got.pid, got.status) == (pid, task_pb2.Status.RUNNING)
        os.kill(pid, 0)  # still alive
        listed_a = a.tasks.List(tasks_pb2.ListTasksRequest(), metadata=a.md).tasks
        assert [x.pid for x in listed_a if x.id == cid] == [pid]

        # B runs a container of the same id: its own task, which ends without touching A's.
        pid_b = b.run(cid, ["sh", "-c", "exit 7"])
        assert pid_b != pid
        done = b.tasks.Wait(tasks_pb2.WaitRequest(container_id=cid), metadata=mb, timeout=20)
        assert done.exit_status == 7
        b.tasks.Delete(tasks_pb2.DeleteTaskRequest(container_id=cid), metadata=mb)
        got = a.get(cid)
        assert (got.pid, got.status) == (pid, task_pb2.Status.RUNNING)
        os.kill(pid, 0)
    finally:
        b.remove(cid)
        a.remove(cid)
    not_found(lambda: a.get(cid))


# ---------------------------------------------------------------------------- events


class Subscriber:
    def __init__(self, ch: grpc.Channel, space: str) -> None:
        self.space = space
        self.events: queue.Queue[events_pb2.Envelope] = queue.Queue()
        self.stub = events_pb2_grpc.EventsStub(ch)
        self.call = self.stub.Subscribe(
            events_pb2.SubscribeRequest(filters=[f'namespace=="{space}"']), metadata=ns(space)
        )
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        with contextlib.suppress(grpc.RpcError):
            for envelope in self.call:
                self.events.put(envelope)

    def publish_marker(self, tag: str) -> None:
        self.stub.Publish(
            events_pb2.PublishRequest(
                topic=MARKER, event=AnyPb(type_url="test.Marker", value=tag.encode())
            ),
            metadata=ns(self.space),
        )

    def until_marker(self, tag: str, timeout: float = 10) -> list[events_pb2.Envelope]:
        """Publish a marker in the subscriber's namespace until it arrives; events before it."""
        got: list[events_pb2.Envelope] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.publish_marker(tag)
            with contextlib.suppress(queue.Empty):
                while True:
                    e = self.events.get(timeout=0.3)
                    if e.topic == MARKER and e.event.value == tag.encode():
                        return got
                    got.append(e)
        raise AssertionError(f"marker never came; got {[e.topic for e in got]}")


def test_events(chan: grpc.Channel) -> None:
    sa, sb = Subscriber(chan, A), Subscriber(chan, B)
    sa.until_marker("ready-a")
    sb.until_marker("ready-b")
    stub = containers_pb2_grpc.ContainersStub(chan)
    events = events_pb2_grpc.EventsStub(chan)
    cid = f"iso-e-{uuid.uuid4().hex[:8]}"
    for space in (A, B):
        stub.Create(
            containers_pb2.CreateContainerRequest(container=container_msg(cid, space, "img")),
            metadata=ns(space),
        )
        events.Publish(
            events_pb2.PublishRequest(topic=f"/iso/{space}", event=AnyPb(type_url="test.Iso")),
            metadata=ns(space),
        )
        stub.Delete(containers_pb2.DeleteContainerRequest(id=cid), metadata=ns(space))
    try:
        for sub, space in ((sa, A), (sb, B)):
            got = sub.until_marker(f"end-{space}")
            assert {e.namespace for e in got} <= {space}, [(e.namespace, e.topic) for e in got]
            topics = [
                e.topic
                for e in got
                if e.topic.startswith(("/containers/", "/iso/"))  # GC etc. may add others
            ]
            assert topics == ["/containers/create", f"/iso/{space}", "/containers/delete"]
    finally:
        sa.call.cancel()
        sb.call.cancel()


# ---------------------------------------------------------------------------- secrets


def test_no_secret_in_the_debug_log(
    tmp_path: Path, auth_registry: Registry, token_registry: Registry
) -> None:
    """Basic and token auth, request and config credentials: the log (debug) holds none."""
    config = tmp_path / "config.toml"
    config.write_text(
        "version = 1\n\n"
        f'[registry.auths."{token_registry.host}"]\n'
        f'username = "{token_registry.username}"\n'
        f'password = "{token_registry.password}"\n'
    )
    d = Linerd(tmp_path / "d", ["--config", str(config)], log_level="debug")
    d.start()
    try:
        ref = "library/busybox:latest"
        for reg in (auth_registry, token_registry):
            pull(
                d,
                reg.ref(ref),
                "secrets-req",
                credentials=transfer_pb2.Credentials(username=reg.username, secret=reg.password),
            )
        pull(d, token_registry.ref("library/busybox:zstd"), "secrets-config")
    finally:
        d.stop()
    text = d.log()
    assert auth_registry.host in text and token_registry.host in text, "the log says nothing"
    assert '"level": "debug"' in text or "debug" in text.lower()
    secrets = set()
    for reg in (auth_registry, token_registry):
        secrets |= {
            reg.password,
            base64.b64encode(f"{reg.username}:{reg.password}".encode()).decode(),
        }
    for secret in secrets:
        assert secret not in text, f"a secret is in the log: {secret[:4]}..."
    assert not re.search(r"Bearer\s+[A-Za-z0-9._~+/-]", text), "a bearer token is in the log"
    assert not re.search(r"Basic\s+[A-Za-z0-9+/=]{8,}", text), "basic credentials in the log"
    # No JWT (header.payload.signature, base64url of '{"'): the token server issues those.
    assert not re.search(r"eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}", text), "a JWT is in the log"
