"""The CRI's two gRPC servicers: each RPC goes to the snake_case method of a handler group.

`RuntimeService` and `ImageService` only route: `/runtime.v1.ImageService/PullImage` calls
`groups["images"].pull_image(request)` and answers what it returns. A group that is absent,
or that lacks the method, answers UNIMPLEMENTED (`NotImplementedYet`), and so does every RPC
no group serves (the metrics and events RPCs, Stream*, CheckpointContainer, ...): every
method of the proto is overridden here, so grpcio's generated defaults (which raise
NotImplementedError, an UNKNOWN through the daemon's interceptor) are never reached.
Handlers raise `linerd.errdefs` exceptions; the daemon's one interceptor maps them.

The reads kubelet repeats (`SERIALIZED`) answer the response already serialized: a group's
`<method>_bytes` when it has one (built from bytes it keeps per record version, so a repeated
call builds and serializes no message), else its message serialized here. Those RPCs are
registered with a serializer that passes bytes through (`add_to_server`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import grpc

from liner_api.runtime.v1 import api_pb2, api_pb2_grpc
from linerd.errdefs import NotImplementedYet
from linerd.services.convert import answering_bytes

# RPC name -> (group, method): who answers what (CRI-CONTEXT.md's groups).
RUNTIME_ROUTES: dict[str, tuple[str, str]] = {
    "Version": ("info", "version"),
    "Status": ("info", "status"),
    "RuntimeConfig": ("info", "runtime_config"),
    "UpdateRuntimeConfig": ("info", "update_runtime_config"),
    "RunPodSandbox": ("sandboxes", "run_pod_sandbox"),
    "StopPodSandbox": ("sandboxes", "stop_pod_sandbox"),
    "RemovePodSandbox": ("sandboxes", "remove_pod_sandbox"),
    "PodSandboxStatus": ("sandboxes", "pod_sandbox_status"),
    "ListPodSandbox": ("sandboxes", "list_pod_sandbox"),
    "CreateContainer": ("containers", "create_container"),
    "StartContainer": ("containers", "start_container"),
    "StopContainer": ("containers", "stop_container"),
    "RemoveContainer": ("containers", "remove_container"),
    "ListContainers": ("containers", "list_containers"),
    "ContainerStatus": ("containers", "container_status"),
    "UpdateContainerResources": ("containers", "update_container_resources"),
    "ReopenContainerLog": ("containers", "reopen_container_log"),
    "ExecSync": ("containers", "exec_sync"),
    "ContainerStats": ("stats", "container_stats"),
    "ListContainerStats": ("stats", "list_container_stats"),
    "PodSandboxStats": ("stats", "pod_sandbox_stats"),
    "ListPodSandboxStats": ("stats", "list_pod_sandbox_stats"),
    "Exec": ("streaming", "exec"),
    "Attach": ("streaming", "attach"),
    "PortForward": ("streaming", "port_forward"),
}

IMAGE_ROUTES: dict[str, tuple[str, str]] = {
    "ListImages": ("images", "list_images"),
    "ImageStatus": ("images", "image_status"),
    "PullImage": ("images", "pull_image"),
    "RemoveImage": ("images", "remove_image"),
    "ImageFsInfo": ("images", "image_fs_info"),
}

# RPCs answered as serialized bytes (see the module's docstring).
SERIALIZED = frozenset(
    {
        "ListContainers",
        "ContainerStatus",
        "ListPodSandbox",
        "PodSandboxStatus",
        "ListImages",
        "ImageStatus",
    }
)

Groups = Mapping[str, object]


def _handler(groups: Groups, rpc: str, route: tuple[str, str] | None) -> Callable[..., Any]:
    group = groups.get(route[0]) if route is not None else None
    method = getattr(group, route[1], None) if route is not None and group is not None else None
    if method is None:
        raise NotImplementedYet(f"{rpc} is not implemented by liner")
    return method


def _unary(rpc: str, route: tuple[str, str] | None) -> Callable[..., Awaitable[Any]]:
    async def call(self: _Routed, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await _handler(self.groups, rpc, route)(request)

    return call


def _serialized(rpc: str, route: tuple[str, str] | None) -> Callable[..., Awaitable[bytes]]:
    raw_name = f"{route[1]}_bytes" if route is not None else ""

    async def call(self: _Routed, request: Any, context: grpc.aio.ServicerContext) -> bytes:
        group = self.groups.get(route[0]) if route is not None else None
        raw = getattr(group, raw_name, None) if group is not None else None
        if raw is not None:
            return await raw(request)
        response = await _handler(self.groups, rpc, route)(request)
        return response.SerializeToString()

    return call


def _stream(rpc: str) -> Callable[..., AsyncIterator[Any]]:
    async def call(self: _Routed, request: Any, context: grpc.aio.ServicerContext) -> Any:
        raise NotImplementedYet(f"{rpc} is not implemented by liner")
        yield  # an async generator, as the interceptor iterates server-streaming calls

    return call


class _Routed:
    groups: Groups

    def __init__(self, groups: Groups) -> None:
        self.groups = groups


def _routed(
    name: str, base: type, service: str, routes: dict[str, tuple[str, str]]
) -> type[_Routed]:
    """A servicer class over `base` whose every method of `service` is routed."""
    methods: dict[str, Any] = {}
    descriptor = api_pb2.DESCRIPTOR.services_by_name[service]
    for method in descriptor.methods:
        if method.server_streaming:
            call = _stream(f"{service}/{method.name}")
        elif method.name in SERIALIZED:
            call = _serialized(f"{service}/{method.name}", routes.get(method.name))
        else:
            call = _unary(f"{service}/{method.name}", routes.get(method.name))
        call.__name__ = call.__qualname__ = method.name
        methods[method.name] = call
    unknown = set(routes) - set(descriptor.methods_by_name)
    if unknown:  # a typo in the table above
        raise AssertionError(f"routes for RPCs {service} lacks: {sorted(unknown)}")
    return type(name, (_Routed, base), methods)


RuntimeService = _routed(
    "RuntimeService", api_pb2_grpc.RuntimeServiceServicer, "RuntimeService", RUNTIME_ROUTES
)
ImageService = _routed(
    "ImageService", api_pb2_grpc.ImageServiceServicer, "ImageService", IMAGE_ROUTES
)


def add_to_server(servicer: _Routed, server: grpc.aio.Server, service: str) -> None:
    """grpcio's generated `add_<service>Servicer_to_server`, with the `SERIALIZED` RPCs'
    bytes passed through as the containerd API's kept Lists are (services/convert.py)."""
    add = getattr(api_pb2_grpc, f"add_{service}Servicer_to_server")
    answering_bytes(add, *SERIALIZED)(servicer, server)
