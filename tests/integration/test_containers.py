"""Containers service against a real linerd: records kept verbatim, masks, filters, events, GC."""

from __future__ import annotations

import json

import grpc
import pytest
from google.protobuf.any_pb2 import Any as AnyPb
from support import Linerd, ns

from liner_api.containerd.runc.v1 import options_pb2
from liner_api.containerd.services.containers.v1 import containers_pb2 as pb
from liner_api.containerd.services.containers.v1 import containers_pb2_grpc
from liner_api.containerd.services.leases.v1 import leases_pb2, leases_pb2_grpc
from liner_api.containerd.services.snapshots.v1 import snapshots_pb2 as spb
from liner_api.containerd.services.snapshots.v1 import snapshots_pb2_grpc

pytestmark = pytest.mark.integration

SPEC_URL = "types.containerd.io/opencontainers/runtime-spec/1/Spec"


def container(cid: str, **fields: object) -> pb.Container:
    spec = json.dumps({"ociVersion": "1.0.2-dev", "process": {"args": ["sh"]}}).encode()
    options = options_pb2.Options(binary_name="runc")
    defaults: dict[str, object] = {
        "id": cid,
        "image": "reg.test/app:1",
        "runtime": pb.Container.Runtime(
            name="io.containerd.runc.v2",
            options=AnyPb(type_url="containerd.runc.v1.Options", value=options.SerializeToString()),
        ),
        "spec": AnyPb(type_url=SPEC_URL, value=spec),
        "snapshotter": "overlayfs",
        "snapshot_key": cid,
    }
    defaults.update(fields)
    return pb.Container(**defaults)  # type: ignore[arg-type]


def code(call: object) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()  # type: ignore[operator]
    return info.value.code()


def test_crud_keeps_spec_and_options_verbatim(channel: grpc.Channel) -> None:
    stub = containers_pb2_grpc.ContainersStub(channel)
    sent = container("c1", labels={"team": "a"})
    created = stub.Create(pb.CreateContainerRequest(container=sent), metadata=ns()).container
    got = stub.Get(pb.GetContainerRequest(id="c1"), metadata=ns()).container
    for c in (created, got):
        assert c.spec == sent.spec
        assert c.runtime == sent.runtime
        assert c.created_at.seconds > 0
    stub.Create(pb.CreateContainerRequest(container=container("c2")), metadata=ns())
    assert [c.id for c in stub.List(pb.ListContainersRequest(), metadata=ns()).containers] == [
        "c1",
        "c2",
    ]
    streamed = [
        m.container.id
        for m in stub.ListStream(
            pb.ListContainersRequest(filters=['labels."team"==a']), metadata=ns()
        )
    ]
    assert streamed == ["c1"]

    updated = stub.Update(
        pb.UpdateContainerRequest(
            container=container("c1", labels={"team": "b", "x": "1"}, image="other"),
            update_mask={"paths": ["labels.team", "image"]},
        ),
        metadata=ns(),
    ).container
    assert dict(updated.labels) == {"team": "b"} and updated.image == "other"
    stub.Delete(pb.DeleteContainerRequest(id="c1"), metadata=ns())
    assert (
        code(lambda: stub.Get(pb.GetContainerRequest(id="c1"), metadata=ns()))
        == grpc.StatusCode.NOT_FOUND
    )
    stub.Create(pb.CreateContainerRequest(container=container("c1")), metadata=ns())  # id reusable


def test_errors_and_isolation(channel: grpc.Channel) -> None:
    stub = containers_pb2_grpc.ContainersStub(channel)
    stub.Create(pb.CreateContainerRequest(container=container("e1")), metadata=ns())
    create = lambda c: lambda: stub.Create(pb.CreateContainerRequest(container=c), metadata=ns())  # noqa: E731
    assert code(create(container("e1"))) == grpc.StatusCode.ALREADY_EXISTS
    assert code(create(container("bad/id"))) == grpc.StatusCode.INVALID_ARGUMENT
    assert (
        code(create(container("nort", runtime=pb.Container.Runtime())))
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    no_spec = container("nospec")
    no_spec.ClearField("spec")
    assert code(create(no_spec)) == grpc.StatusCode.INVALID_ARGUMENT
    assert code(create(container("nosn", snapshotter=""))) == grpc.StatusCode.INVALID_ARGUMENT
    assert (
        code(
            lambda: stub.Update(
                pb.UpdateContainerRequest(
                    container=container("e1"), update_mask={"paths": ["runtime"]}
                ),
                metadata=ns(),
            )
        )
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    assert (
        code(
            lambda: stub.Update(
                pb.UpdateContainerRequest(container=container("e1", snapshotter="native")),
                metadata=ns(),
            )
        )
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    assert (
        code(lambda: stub.Delete(pb.DeleteContainerRequest(id="absent"), metadata=ns()))
        == grpc.StatusCode.NOT_FOUND
    )
    assert (
        code(lambda: stub.Get(pb.GetContainerRequest(id="e1"), metadata=ns("other")))
        == grpc.StatusCode.NOT_FOUND
    )


def test_container_holds_its_snapshot_against_gc(linerd: Linerd) -> None:
    with linerd.channel() as channel:
        leases = leases_pb2_grpc.LeasesStub(channel)
        snaps = snapshots_pb2_grpc.SnapshotsStub(channel)
        stub = containers_pb2_grpc.ContainersStub(channel)
        leases.Create(leases_pb2.CreateRequest(id="run"), metadata=ns())
        snaps.Prepare(
            spb.PrepareSnapshotRequest(snapshotter="overlayfs", key="held"),
            metadata=ns(lease="run"),
        )
        stub.Create(
            pb.CreateContainerRequest(container=container("held")), metadata=ns(lease="run")
        )
        leases.Delete(leases_pb2.DeleteRequest(id="run", sync=True), metadata=ns())
        snaps.Stat(spb.StatSnapshotRequest(snapshotter="overlayfs", key="held"), metadata=ns())
        stub.Delete(pb.DeleteContainerRequest(id="held"), metadata=ns())
        leases.Create(leases_pb2.CreateRequest(id="gc"), metadata=ns())
        leases.Delete(leases_pb2.DeleteRequest(id="gc", sync=True), metadata=ns())
        assert (
            code(
                lambda: snaps.Stat(
                    spb.StatSnapshotRequest(snapshotter="overlayfs", key="held"), metadata=ns()
                )
            )
            == grpc.StatusCode.NOT_FOUND
        )


def test_list_follows_every_write(channel: grpc.Channel) -> None:
    """List and ListStream answer from serializations kept per record and per namespace:
    each write shows in the next List, in every namespace, with or without filters."""
    stub = containers_pb2_grpc.ContainersStub(channel)

    def listed(namespace: str = "lists", *filters: str) -> list[pb.Container]:
        req = pb.ListContainersRequest(filters=list(filters))
        answer = list(stub.List(req, metadata=ns(namespace)).containers)
        streamed = [m.container for m in stub.ListStream(req, metadata=ns(namespace))]
        assert streamed == answer
        return answer

    def got(cid: str, namespace: str = "lists") -> pb.Container:
        return stub.Get(pb.GetContainerRequest(id=cid), metadata=ns(namespace)).container

    assert listed() == []
    for cid in ("l2", "l1", "l3"):
        stub.Create(
            pb.CreateContainerRequest(container=container(cid, labels={"n": cid})),
            metadata=ns("lists"),
        )
    assert listed() == [got("l1"), got("l2"), got("l3")]
    assert listed() == [got("l1"), got("l2"), got("l3")]  # unchanged: the kept answer

    stub.Update(
        pb.UpdateContainerRequest(
            container=container("l2", labels={"n": "changed"}),
            update_mask={"paths": ["labels"]},
        ),
        metadata=ns("lists"),
    )
    assert dict(got("l2").labels) == {"n": "changed"}
    assert listed() == [got("l1"), got("l2"), got("l3")]
    assert listed("lists", "labels.n==changed") == [got("l2")]

    stub.Delete(pb.DeleteContainerRequest(id="l1"), metadata=ns("lists"))
    stub.Create(pb.CreateContainerRequest(container=container("l0")), metadata=ns("lists"))
    assert [c.id for c in listed()] == ["l0", "l2", "l3"]
    assert listed() == [got("l0"), got("l2"), got("l3")]

    # Another namespace's List neither sees nor disturbs this one's.
    stub.Create(pb.CreateContainerRequest(container=container("l1")), metadata=ns("other"))
    assert listed("other") == [got("l1", "other")]
    assert [c.id for c in listed()] == ["l0", "l2", "l3"]
    for cid in ("l0", "l2", "l3"):
        stub.Delete(pb.DeleteContainerRequest(id=cid), metadata=ns("lists"))
    assert listed() == []
