from __future__ import annotations

import grpc
from google.protobuf.empty_pb2 import Empty

from liner_api.containerd.services.namespaces.v1 import namespaces_pb2, namespaces_pb2_grpc
from linerd.core import filters
from linerd.core.types import Namespace
from linerd.local.namespaces import Namespaces


def _namespace(ns: Namespace) -> namespaces_pb2.Namespace:
    return namespaces_pb2.Namespace(name=ns.name, labels=ns.labels)


class NamespacesService(namespaces_pb2_grpc.NamespacesServicer):
    def __init__(self, local: Namespaces) -> None:
        self._local = local

    async def Get(
        self, request: namespaces_pb2.GetNamespaceRequest, ctx: grpc.aio.ServicerContext
    ) -> namespaces_pb2.GetNamespaceResponse:
        ns = await self._local.get(request.name)
        return namespaces_pb2.GetNamespaceResponse(namespace=_namespace(ns))

    async def List(
        self, request: namespaces_pb2.ListNamespacesRequest, ctx: grpc.aio.ServicerContext
    ) -> namespaces_pb2.ListNamespacesResponse:
        match = filters.parse(request.filter)
        found = [
            _namespace(ns)
            for ns in await self._local.list()
            if match.match(filters.dict_adaptor({"name": ns.name}, ns.labels))
        ]
        return namespaces_pb2.ListNamespacesResponse(namespaces=found)

    async def Create(
        self, request: namespaces_pb2.CreateNamespaceRequest, ctx: grpc.aio.ServicerContext
    ) -> namespaces_pb2.CreateNamespaceResponse:
        ns = await self._local.create(request.namespace.name, dict(request.namespace.labels))
        return namespaces_pb2.CreateNamespaceResponse(namespace=_namespace(ns))

    async def Update(
        self, request: namespaces_pb2.UpdateNamespaceRequest, ctx: grpc.aio.ServicerContext
    ) -> namespaces_pb2.UpdateNamespaceResponse:
        ns = await self._local.update(
            request.namespace.name, dict(request.namespace.labels), list(request.update_mask.paths)
        )
        return namespaces_pb2.UpdateNamespaceResponse(namespace=_namespace(ns))

    async def Delete(
        self, request: namespaces_pb2.DeleteNamespaceRequest, ctx: grpc.aio.ServicerContext
    ) -> Empty:
        await self._local.delete(request.name)
        return Empty()
