from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from google.protobuf.empty_pb2 import Empty

from liner_api.containerd.services.introspection.v1 import (
    introspection_pb2,
    introspection_pb2_grpc,
)
from linerd.core import filters


@dataclass(frozen=True, slots=True)
class PluginEntry:
    """What linerd serves, named with containerd's plugin types so tools read it alike."""

    type: str
    id: str
    requires: tuple[str, ...] = ()
    exports: tuple[tuple[str, str], ...] = ()


class IntrospectionService(introspection_pb2_grpc.IntrospectionServicer):
    def __init__(self, uuid: str, plugins: Sequence[PluginEntry]) -> None:
        self._uuid = uuid
        self._plugins = list(plugins)

    async def Server(
        self, request: Empty, ctx: grpc.aio.ServicerContext
    ) -> introspection_pb2.ServerResponse:
        return introspection_pb2.ServerResponse(
            uuid=self._uuid, pid=os.getpid(), pidns=os.stat("/proc/self/ns/pid").st_ino
        )

    async def Plugins(
        self, request: introspection_pb2.PluginsRequest, ctx: grpc.aio.ServicerContext
    ) -> introspection_pb2.PluginsResponse:
        match = filters.parse_all(list(request.filters))
        plugins = [
            introspection_pb2.Plugin(
                type=p.type, id=p.id, requires=p.requires, exports=dict(p.exports)
            )
            for p in self._plugins
            if match.match(filters.dict_adaptor({"type": p.type, "id": p.id}))
        ]
        return introspection_pb2.PluginsResponse(plugins=plugins)
