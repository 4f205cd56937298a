"""The CRI servicers' routing, and the info group, without a daemon."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from liner_api.runtime.v1 import api_pb2, api_pb2_grpc
from linerd.cri.cni import NetworkStatus
from linerd.cri.info import Info
from linerd.cri.service import (
    IMAGE_ROUTES,
    RUNTIME_ROUTES,
    SERIALIZED,
    ImageService,
    RuntimeService,
    add_to_server,
)
from linerd.errdefs import NotImplementedYet

pytestmark = pytest.mark.unit


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


@pytest.mark.parametrize(
    ("servicer", "base", "service"),
    [
        (RuntimeService, api_pb2_grpc.RuntimeServiceServicer, "RuntimeService"),
        (ImageService, api_pb2_grpc.ImageServiceServicer, "ImageService"),
    ],
)
def test_every_rpc_is_overridden(servicer: type, base: type, service: str) -> None:
    # grpcio's defaults raise NotImplementedError (UNKNOWN through the interceptor).
    for method in api_pb2.DESCRIPTOR.services_by_name[service].methods:
        assert getattr(servicer, method.name) is not getattr(base, method.name), method.name


def test_routes_name_only_rpcs_of_the_proto() -> None:
    runtime = api_pb2.DESCRIPTOR.services_by_name["RuntimeService"].methods_by_name
    images = api_pb2.DESCRIPTOR.services_by_name["ImageService"].methods_by_name
    assert set(RUNTIME_ROUTES) <= set(runtime)
    assert set(IMAGE_ROUTES) <= set(images)


class _Images:
    def __init__(self) -> None:
        self.seen: list[Any] = []

    async def list_images(self, request: api_pb2.ListImagesRequest) -> api_pb2.ListImagesResponse:
        self.seen.append(request)
        return api_pb2.ListImagesResponse(images=[api_pb2.Image(id="sha256:x")])


def test_a_call_goes_to_its_groups_method() -> None:
    images = _Images()
    servicer = ImageService({"images": images})
    request = api_pb2.ListImagesRequest()
    # ListImages is answered serialized (SERIALIZED): a group without list_images_bytes
    # has its message serialized by the servicer.
    response = api_pb2.ListImagesResponse.FromString(_run(servicer.ListImages(request, None)))
    assert images.seen == [request]
    assert response.images[0].id == "sha256:x"


class _RawImages(_Images):
    async def list_images_bytes(self, request: api_pb2.ListImagesRequest) -> bytes:
        self.seen.append(("bytes", request))
        return b"kept"


def test_a_serialized_rpc_prefers_the_groups_bytes() -> None:
    images = _RawImages()
    servicer = ImageService({"images": images})
    request = api_pb2.ListImagesRequest()
    assert _run(servicer.ListImages(request, None)) == b"kept"
    assert images.seen == [("bytes", request)]


def test_serialized_rpcs_pass_their_bytes_through() -> None:
    class Server:
        def __init__(self) -> None:
            self.registered: dict[str, Any] = {}

        def add_generic_rpc_handlers(self, handlers: Any) -> None:
            pass

        def add_registered_method_handlers(self, service: str, handlers: Any) -> None:
            self.registered = handlers

    server = Server()
    add_to_server(RuntimeService({}), server, "RuntimeService")  # type: ignore[arg-type]
    methods = api_pb2.DESCRIPTOR.services_by_name["RuntimeService"].methods
    assert set(server.registered) == {m.name for m in methods}
    for name, handler in server.registered.items():
        if name in SERIALIZED:
            assert handler.response_serializer(b"\x0a\x00") == b"\x0a\x00", name
        else:
            assert handler.response_serializer is not None, name
        assert handler.request_deserializer is not None, name
    assert server.registered["GetContainerEvents"].response_streaming


def test_an_absent_group_or_method_is_unimplemented() -> None:
    servicer = ImageService({"images": _Images()})
    with pytest.raises(NotImplementedYet, match="ImageService/PullImage"):
        _run(servicer.PullImage(api_pb2.PullImageRequest(), None))
    runtime = RuntimeService({})
    with pytest.raises(NotImplementedYet, match="RuntimeService/RunPodSandbox"):
        _run(runtime.RunPodSandbox(api_pb2.RunPodSandboxRequest(), None))
    with pytest.raises(NotImplementedYet, match="RuntimeService/CheckpointContainer"):
        _run(runtime.CheckpointContainer(api_pb2.CheckpointContainerRequest(), None))


def test_a_streaming_rpc_is_unimplemented_when_read() -> None:
    async def first() -> Any:
        async for item in RuntimeService({}).GetContainerEvents(api_pb2.GetEventsRequest(), None):
            return item

    with pytest.raises(NotImplementedYet):
        _run(first())


class _Network:
    def __init__(self, status: NetworkStatus) -> None:
        self.value = status

    async def status(self) -> NetworkStatus:
        return self.value


def test_info_version_and_runtime_config() -> None:
    info = Info(_Network(NetworkStatus(True)), "systemd", "1.2.3")
    version = _run(info.version(api_pb2.VersionRequest()))
    assert (version.version, version.runtime_name, version.runtime_version) == (
        "0.1.0",
        "liner",
        "1.2.3",
    )
    assert version.runtime_api_version == "v1"
    config = _run(info.runtime_config(api_pb2.RuntimeConfigRequest()))
    assert config.linux.cgroup_driver == api_pb2.CgroupDriver.SYSTEMD
    cgroupfs = Info(_Network(NetworkStatus(True)), "cgroupfs", "1")
    assert (
        _run(cgroupfs.runtime_config(api_pb2.RuntimeConfigRequest())).linux.cgroup_driver
        == api_pb2.CgroupDriver.CGROUPFS
    )


def test_info_status_follows_the_network() -> None:
    network = _Network(NetworkStatus(False, "NetworkPluginNotReady", "no network config found"))
    info = Info(network, "cgroupfs", "1")
    conditions = _run(info.status(api_pb2.StatusRequest())).status.conditions
    assert [(c.type, c.status) for c in conditions] == [
        ("RuntimeReady", True),
        ("NetworkReady", False),
    ]
    assert conditions[1].reason == "NetworkPluginNotReady"
    assert conditions[1].message == "no network config found"
    network.value = NetworkStatus(True, network="pods", source="/etc/cni/net.d/10-pods.conflist")
    response = _run(info.status(api_pb2.StatusRequest(verbose=True)))
    assert [c.status for c in response.status.conditions] == [True, True]
    assert json.loads(response.info["network"])["name"] == "pods"


def test_update_runtime_config_keeps_the_pod_cidr() -> None:
    info = Info(_Network(NetworkStatus(True)), "cgroupfs", "1")
    request = api_pb2.UpdateRuntimeConfigRequest()
    request.runtime_config.network_config.pod_cidr = "10.244.0.0/24"
    _run(info.update_runtime_config(request))
    assert info.pod_cidr == "10.244.0.0/24"
    _run(info.update_runtime_config(api_pb2.UpdateRuntimeConfigRequest()))
    assert info.pod_cidr == "10.244.0.0/24"  # an empty CIDR changes nothing


class _Sandboxes:
    def __init__(self) -> None:
        self.calls: list[str] = []

    async def run_pod_sandbox(
        self, request: api_pb2.RunPodSandboxRequest
    ) -> api_pb2.RunPodSandboxResponse:
        self.calls.append("run")
        return api_pb2.RunPodSandboxResponse(pod_sandbox_id="p1")

    async def stop_pod_sandbox(
        self, request: api_pb2.StopPodSandboxRequest
    ) -> api_pb2.StopPodSandboxResponse:
        self.calls.append("stop")
        return api_pb2.StopPodSandboxResponse()

    async def pod_sandbox_status_bytes(self, request: api_pb2.PodSandboxStatusRequest) -> bytes:
        self.calls.append(f"status {request.pod_sandbox_id}")
        raise RuntimeError("a failure is the later call's to report")


def test_a_start_builds_the_status_kubelet_asks_next_after_answering() -> None:
    sandboxes = _Sandboxes()
    servicer = RuntimeService({"sandboxes": sandboxes})

    async def body() -> None:
        await servicer.RunPodSandbox(api_pb2.RunPodSandboxRequest(), None)
        assert sandboxes.calls == ["run"]  # not before the answer
        for _ in range(3):
            await asyncio.sleep(0)
        assert sandboxes.calls == ["run", "status p1"]
        await servicer.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id="p1"), None)
        for _ in range(3):
            await asyncio.sleep(0)
        assert sandboxes.calls == ["run", "status p1", "stop"]  # only after the starts

    _run(body())
