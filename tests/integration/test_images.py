"""Images service against a real linerd: CRUD, masks, filters, events, GC of targets."""

from __future__ import annotations

import contextlib
import hashlib
import queue
import threading

import grpc
import pytest
from support import ns

from liner_api.containerd.events import image_pb2 as image_events
from liner_api.containerd.services.content.v1 import content_pb2, content_pb2_grpc
from liner_api.containerd.services.events.v1 import events_pb2, events_pb2_grpc
from liner_api.containerd.services.images.v1 import images_pb2, images_pb2_grpc
from liner_api.containerd.types import descriptor_pb2

pytestmark = pytest.mark.integration

MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def put_blob(
    channel: grpc.Channel,
    data: bytes,
    namespace: str = "default",
    labels: dict[str, str] | None = None,
) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    stub = content_pb2_grpc.ContentStub(channel)
    requests = [
        content_pb2.WriteContentRequest(action=0, ref=f"ref-{digest}", total=len(data)),
        content_pb2.WriteContentRequest(action=1, offset=0, data=data),
        content_pb2.WriteContentRequest(
            action=2, total=len(data), offset=len(data), expected=digest, labels=labels or {}
        ),
    ]
    list(stub.Write(iter(requests), metadata=ns(namespace)))
    return digest


def image(name: str, digest: str, size: int = 10, **labels: str) -> images_pb2.Image:
    return images_pb2.Image(
        name=name,
        labels=labels,
        target=descriptor_pb2.Descriptor(media_type=MANIFEST, digest=digest, size=size),
    )


def code(call: object) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()  # type: ignore[operator]
    return info.value.code()


def test_create_get_list_update_delete(channel: grpc.Channel) -> None:
    stub = images_pb2_grpc.ImagesStub(channel)
    digest = "sha256:" + "1" * 64
    created = stub.Create(
        images_pb2.CreateImageRequest(image=image("reg.test/app:1", digest, team="a")),
        metadata=ns(),
    ).image
    assert created.created_at.seconds > 0
    assert (
        stub.Get(
            images_pb2.GetImageRequest(name="reg.test/app:1"), metadata=ns()
        ).image.target.digest
        == digest
    )
    stub.Create(
        images_pb2.CreateImageRequest(image=image("reg.test/other:2", digest)), metadata=ns()
    )
    names = lambda *f: [  # noqa: E731
        i.name
        for i in stub.List(images_pb2.ListImagesRequest(filters=list(f)), metadata=ns()).images
    ]
    assert names() == ["reg.test/app:1", "reg.test/other:2"]
    assert names('labels."team"==a') == ["reg.test/app:1"]
    assert names("name~=other") == ["reg.test/other:2"]
    assert names(f"target.digest=={digest}") == ["reg.test/app:1", "reg.test/other:2"]

    new_target = "sha256:" + "2" * 64
    updated = stub.Update(
        images_pb2.UpdateImageRequest(
            image=image("reg.test/app:1", new_target, extra="x"),
            update_mask={"paths": ["labels.extra"]},
        ),
        metadata=ns(),
    ).image
    assert dict(updated.labels) == {"team": "a", "extra": "x"}
    assert updated.target.digest == digest  # only the masked path changed
    updated = stub.Update(
        images_pb2.UpdateImageRequest(image=image("reg.test/app:1", new_target)), metadata=ns()
    ).image
    assert updated.target.digest == new_target and dict(updated.labels) == {}

    stub.Delete(images_pb2.DeleteImageRequest(name="reg.test/app:1"), metadata=ns())
    assert (
        code(lambda: stub.Get(images_pb2.GetImageRequest(name="reg.test/app:1"), metadata=ns()))
        == grpc.StatusCode.NOT_FOUND
    )


def test_errors(channel: grpc.Channel) -> None:
    stub = images_pb2_grpc.ImagesStub(channel)
    digest = "sha256:" + "3" * 64
    stub.Create(images_pb2.CreateImageRequest(image=image("x", digest)), metadata=ns())
    cases = {
        grpc.StatusCode.ALREADY_EXISTS: lambda: stub.Create(
            images_pb2.CreateImageRequest(image=image("x", digest)), metadata=ns()
        ),
        grpc.StatusCode.INVALID_ARGUMENT: lambda: stub.Create(
            images_pb2.CreateImageRequest(image=image("", digest)), metadata=ns()
        ),
        grpc.StatusCode.NOT_FOUND: lambda: stub.Update(
            images_pb2.UpdateImageRequest(image=image("absent", digest)), metadata=ns()
        ),
    }
    for expected, call in cases.items():
        assert code(call) == expected
    bad_digest = images_pb2.CreateImageRequest(image=image("y", "sha256:nothex"))
    assert code(lambda: stub.Create(bad_digest, metadata=ns())) == grpc.StatusCode.INVALID_ARGUMENT
    bad_mask = images_pb2.UpdateImageRequest(
        image=image("x", digest), update_mask={"paths": ["name"]}
    )
    assert code(lambda: stub.Update(bad_mask, metadata=ns())) == grpc.StatusCode.INVALID_ARGUMENT
    assert (
        code(lambda: stub.Delete(images_pb2.DeleteImageRequest(name="absent"), metadata=ns()))
        == grpc.StatusCode.NOT_FOUND
    )
    # isolation: the image is invisible from another namespace
    assert (
        code(lambda: stub.Get(images_pb2.GetImageRequest(name="x"), metadata=ns("elsewhere")))
        == grpc.StatusCode.NOT_FOUND
    )


def test_events_are_published(channel: grpc.Channel) -> None:
    events = events_pb2_grpc.EventsStub(channel)
    stream = events.Subscribe(
        events_pb2.SubscribeRequest(filters=['topic~="/images/"']), metadata=ns()
    )
    received: queue.Queue[events_pb2.Envelope] = queue.Queue()

    def pump() -> None:
        with contextlib.suppress(grpc.RpcError):  # cancelled at the end
            for envelope in stream:
                received.put(envelope)

    threading.Thread(target=pump, daemon=True).start()
    stub = images_pb2_grpc.ImagesStub(channel)
    digest = "sha256:" + "4" * 64
    # The subscription is registered asynchronously: probe until an event arrives.
    for _ in range(100):
        stub.Create(images_pb2.CreateImageRequest(image=image("probe", digest)), metadata=ns())
        stub.Delete(images_pb2.DeleteImageRequest(name="probe"), metadata=ns())
        try:
            received.get(timeout=0.1)
            break
        except queue.Empty:
            continue
    stub.Create(images_pb2.CreateImageRequest(image=image("e", digest)), metadata=ns())
    stub.Update(images_pb2.UpdateImageRequest(image=image("e", digest, k="v")), metadata=ns())
    stub.Delete(images_pb2.DeleteImageRequest(name="e"), metadata=ns())
    mine = []
    while len(mine) < 3:
        envelope = received.get(timeout=10)
        if envelope.topic == "/images/create":
            payload = image_events.ImageCreate.FromString(envelope.event.value)
        elif envelope.topic == "/images/update":
            payload = image_events.ImageUpdate.FromString(envelope.event.value)
        else:
            payload = image_events.ImageDelete.FromString(envelope.event.value)
        if payload.name == "e":
            mine.append(envelope)
    stream.cancel()
    assert [e.topic for e in mine] == ["/images/create", "/images/update", "/images/delete"]
    assert mine[0].event.type_url == "containerd.services.images.v1.ImageCreate"
    assert mine[0].namespace == "default"


def test_delete_with_sync_collects_the_target_tree(channel: grpc.Channel) -> None:
    content = content_pb2_grpc.ContentStub(channel)
    layer = put_blob(channel, b"layer bytes")
    manifest = put_blob(
        channel, b"manifest bytes", labels={"containerd.io/gc.ref.content.l.0": layer}
    )
    images = images_pb2_grpc.ImagesStub(channel)
    images.Create(images_pb2.CreateImageRequest(image=image("app", manifest)), metadata=ns())
    # held by the image: a sync delete of something else leaves both
    other = put_blob(channel, b"unreferenced")
    content.Delete(content_pb2.DeleteContentRequest(digest=other), metadata=ns())
    for digest in (layer, manifest):
        content.Info(content_pb2.InfoRequest(digest=digest), metadata=ns())
    images.Delete(images_pb2.DeleteImageRequest(name="app", sync=True), metadata=ns())
    for digest in (layer, manifest):
        assert (
            code(lambda d=digest: content.Info(content_pb2.InfoRequest(digest=d), metadata=ns()))
            == grpc.StatusCode.NOT_FOUND
        )
