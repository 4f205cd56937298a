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

import asyncio
import contextlib
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

# A read kubelet makes right after a write, with its request from the write's: its answer is
# built (and kept, as the reads keep theirs) while the write's answer travels back, so the
# first status after a start answers kept bytes as every later one does. The client's next
# request arrives ~0.5 ms after the answer leaves; building the first status took ~0.3 ms
# of it on the event loop.
FOLLOW_UPS: dict[str, tuple[str, Callable[[Any, Any], Any]]] = {
    "RunPodSandbox": (
        "PodSandboxStatus",
        lambda _req, resp: api_pb2.PodSandboxStatusRequest(pod_sandbox_id=resp.pod_sandbox_id),
    ),
    "StartContainer": (
        "ContainerStatus",
        lambda req, _resp: api_pb2.ContainerStatusRequest(container_id=req.container_id),
    ),
}

Groups = Mapping[str, object]


def _handler(groups: Groups, rpc: str, route: tuple[str, str] | None) -> Callable[..., Any]:
    group = groups.get(route[0]) if route is not None else None
    method = getattr(group, route[1], None) if route is not None and group is not None else None
    if method is None:
        raise NotImplementedYet(f"{rpc} is not implemented by liner")
    return method


def _unary(
    rpc: str,
    route: tuple[str, str] | None,
    follow_up: tuple[tuple[str, str], Callable[[Any, Any], Any]] | None = None,
) -> Callable[..., Awaitable[Any]]:
    async def call(self: _Routed, request: Any, context: grpc.aio.ServicerContext) -> Any:
        response = await _handler(self.groups, rpc, route)(request)
        if follow_up is not None:
            self.prepare(follow_up[0], follow_up[1](request, response))
        return response

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
        self._preparing: set[asyncio.Task[None]] = set()

    def prepare(self, route: tuple[str, str], request: Any) -> None:
        """Build (and so keep) the serialized answer to `request` in a task of its own. Its
        first step runs after the current one, in which grpc.aio submits the current call's
        answer; failures are the later call's to report."""
        raw = getattr(self.groups.get(route[0]), f"{route[1]}_bytes", None)
        if raw is None:
            return

        async def build() -> None:
            with contextlib.suppress(Exception):
                await raw(request)

        task = asyncio.ensure_future(build())
        self._preparing.add(task)
        task.add_done_callback(self._preparing.discard)


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
            follow = FOLLOW_UPS.get(method.name)
            then = None
            if follow is not None and (follow_route := routes.get(follow[0])) is not None:
                then = (follow_route, follow[1])
            call = _unary(f"{service}/{method.name}", routes.get(method.name), then)
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
