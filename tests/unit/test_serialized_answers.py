"""Answers served from serializations kept per record (services/convert.py)."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from liner_api.containerd.services.containers.v1 import containers_pb2 as pb
from liner_api.containerd.services.containers.v1 import containers_pb2_grpc
from liner_api.containerd.services.tasks.v1 import tasks_pb2
from liner_api.containerd.types.task import task_pb2
from linerd.services.convert import answering_bytes, framed

pytestmark = pytest.mark.unit


def test_frames_joined_are_the_enclosing_message() -> None:
    containers = [
        pb.Container(id="a", labels={"k": "v" * 300}, spec={"value": b"x" * 20_000}),
        pb.Container(id="b"),
        pb.Container(),  # an empty element still counts
    ]
    joined = b"".join(framed(c.SerializeToString()) for c in containers)
    assert joined == pb.ListContainersResponse(containers=containers).SerializeToString()
    # A stream's message with the record as its field 1 is the same frame.
    assert framed(containers[0].SerializeToString()) == (
        pb.ListContainerMessage(container=containers[0]).SerializeToString()
    )
    tasks = [task_pb2.Process(id="t", pid=70_000, status=task_pb2.Status.RUNNING)]
    assert b"".join(framed(t.SerializeToString()) for t in tasks) == (
        tasks_pb2.ListTasksResponse(tasks=tasks).SerializeToString()
    )


class _Servicer(containers_pb2_grpc.ContainersServicer):
    async def List(self, request: pb.ListContainersRequest, ctx: object) -> bytes:
        return framed(pb.Container(id="from-bytes").SerializeToString())

    async def Get(self, request: pb.GetContainerRequest, ctx: object) -> pb.GetContainerResponse:
        return pb.GetContainerResponse(container=pb.Container(id=request.id))


def test_named_methods_answer_bytes_the_others_messages(tmp_path: object) -> None:
    add = answering_bytes(containers_pb2_grpc.add_ContainersServicer_to_server, "List")

    async def body() -> None:
        server = grpc.aio.server()
        add(_Servicer(), server)
        address = f"unix://{tmp_path}/s.sock"
        server.add_insecure_port(address)
        await server.start()
        try:
            async with grpc.aio.insecure_channel(address) as ch:
                stub = containers_pb2_grpc.ContainersStub(ch)
                listed = await stub.List(pb.ListContainersRequest())
                got = await stub.Get(pb.GetContainerRequest(id="g"))
        finally:
            await server.stop(None)
        assert [c.id for c in listed.containers] == ["from-bytes"]
        assert got.container.id == "g"

    asyncio.run(body())
