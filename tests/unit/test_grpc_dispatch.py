"""The interceptor's one generic handler (services/interceptor.py `_Registering`): a real
grpc.aio server on a unix socket, the generated registration functions, no daemon."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from liner_api.containerd.services.version.v1 import version_pb2_grpc
from liner_api.runtime.v1 import api_pb2
from linerd.cri.service import RuntimeService, add_to_server
from linerd.errdefs import NotFound
from linerd.services.interceptor import RequestInterceptor
from linerd.services.version import VersionService

pytestmark = pytest.mark.unit


class _Containers:
    async def container_status_bytes(self, req: api_pb2.ContainerStatusRequest) -> bytes:
        if req.container_id != "c1":
            raise NotFound(f"container {req.container_id!r} not found")
        return api_pb2.ContainerStatusResponse(
            status=api_pb2.ContainerStatus(id="c1", state=api_pb2.CONTAINER_RUNNING)
        ).SerializeToString()


class _Recording:
    """A grpc.aio.Server that records what is registered with it."""

    def __init__(self, server: grpc.aio.Server) -> None:
        self.server = server
        self.registered: list[str] = []

    def add_registered_method_handlers(self, service: str, handlers: Any) -> None:
        self.registered.append(service)
        self.server.add_registered_method_handlers(service, handlers)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.server, name)


async def _serve_and_call(sock: Path) -> dict[str, Any]:
    calls: list[tuple[str, str]] = []
    interceptor = RequestInterceptor([lambda method, code, _s: calls.append((method, code))])
    server = grpc.aio.server()
    recording = _Recording(server)
    serving = interceptor.serving(recording)  # type: ignore[arg-type]
    version_pb2_grpc.add_VersionServicer_to_server(VersionService(), serving)
    add_to_server(RuntimeService({"containers": _Containers()}), serving, "RuntimeService")
    health = health_aio.HealthServicer()
    await health.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health, serving)
    server.add_insecure_port(f"unix://{sock}")
    await server.start()
    out: dict[str, Any] = {"registered": recording.registered, "calls": calls}
    try:
        async with grpc.aio.insecure_channel(f"unix://{sock}") as channel:
            status = channel.unary_unary(
                "/runtime.v1.RuntimeService/ContainerStatus",
                request_serializer=api_pb2.ContainerStatusRequest.SerializeToString,
                response_deserializer=api_pb2.ContainerStatusResponse.FromString,
            )
            out["status"] = await status(api_pb2.ContainerStatusRequest(container_id="c1"))
            with pytest.raises(grpc.aio.AioRpcError) as missing:
                await status(api_pb2.ContainerStatusRequest(container_id="nope"))
            out["missing"] = missing.value.code()
            with pytest.raises(grpc.aio.AioRpcError) as absent:
                await channel.unary_unary("/runtime.v1.RuntimeService/ListContainerStats")(b"")
            out["absent"] = absent.value.code()
            with pytest.raises(grpc.aio.AioRpcError) as unknown:
                await channel.unary_unary("/no.such.Service/Call")(b"")
            out["unknown"] = unknown.value.code()
            check = channel.unary_unary(
                "/grpc.health.v1.Health/Check",
                request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
                response_deserializer=health_pb2.HealthCheckResponse.FromString,
            )
            out["health"] = (await check(health_pb2.HealthCheckRequest())).status
            out["version"] = await channel.unary_unary(
                "/containerd.services.version.v1.Version/Version"
            )(b"")
    finally:
        await server.stop(None)
    return out


def test_services_answer_through_one_generic_handler(tmp_path: Path) -> None:
    out = asyncio.run(_serve_and_call(tmp_path / "d.sock"))
    # Nothing registered per method: grpc.aio would wait on one task per method per call.
    assert out["registered"] == []
    assert out["status"].status.id == "c1"
    assert out["status"].status.state == api_pb2.CONTAINER_RUNNING
    # Errors keep their codes; what no group serves is UNIMPLEMENTED, as is what no service has.
    assert out["missing"] == grpc.StatusCode.NOT_FOUND
    assert out["absent"] == grpc.StatusCode.UNIMPLEMENTED
    assert out["unknown"] == grpc.StatusCode.UNIMPLEMENTED
    assert out["health"] == health_pb2.HealthCheckResponse.SERVING
    assert out["version"]  # a serialized VersionResponse
    # Every served call is observed once (the metrics' counters and histograms).
    assert out["calls"] == [
        ("/runtime.v1.RuntimeService/ContainerStatus", "OK"),
        ("/runtime.v1.RuntimeService/ContainerStatus", "NOT_FOUND"),
        ("/runtime.v1.RuntimeService/ListContainerStats", "UNIMPLEMENTED"),
        ("/grpc.health.v1.Health/Check", "OK"),
        ("/containerd.services.version.v1.Version/Version", "OK"),
    ]
