from __future__ import annotations

import grpc
from google.protobuf.empty_pb2 import Empty

from liner_api.containerd.events import namespace_pb2 as events_pb2
from liner_api.containerd.services.namespaces.v1 import namespaces_pb2, namespaces_pb2_grpc
from linerd.core import filters
from linerd.events import Exchange
from linerd.metadata.namespaces import NamespaceStore
from linerd.services.convert import pack


class NamespacesService(namespaces_pb2_grpc.NamespacesServicer):
    def __init__(self, store: NamespaceStore, events: Exchange) -> None:
        self._store = store
        self._events = events

    def _publish(
        self,
        namespace: str,
        topic: str,
        event: events_pb2.NamespaceCreate | events_pb2.NamespaceUpdate | events_pb2.NamespaceDelete,
    ) -> None:
        any_ = pack(event)
        self._events.publish(namespace, topic, any_.type_url, any_.value)

    async def Get(
        self, request: namespaces_pb2.GetNamespaceRequest, ctx: grpc.aio.ServicerContext
    ) -> namespaces_pb2.GetNamespaceResponse:
        ns = await self._store.get(request.name)
        return namespaces_pb2.GetNamespaceResponse(
            namespace=namespaces_pb2.Namespace(name=ns.name, labels=ns.labels)
        )

    async def List(
        self, request: namespaces_pb2.ListNamespacesRequest, ctx: grpc.aio.ServicerContext
    ) -> namespaces_pb2.ListNamespacesResponse:
        match = filters.parse(request.filter)
        found = []
        for ns in await self._store.list():
            if match.match(filters.dict_adaptor({"name": ns.name}, ns.labels)):
                found.append(namespaces_pb2.Namespace(name=ns.name, labels=ns.labels))
        return namespaces_pb2.ListNamespacesResponse(namespaces=found)

    async def Create(
        self, request: namespaces_pb2.CreateNamespaceRequest, ctx: grpc.aio.ServicerContext
    ) -> namespaces_pb2.CreateNamespaceResponse:
        ns = await self._store.create(request.namespace.name, dict(request.namespace.labels))
        self._publish(
            ns.name,
            "/namespaces/create",
            events_pb2.NamespaceCreate(name=ns.name, labels=ns.labels),
        )
        return namespaces_pb2.CreateNamespaceResponse(
            namespace=namespaces_pb2.Namespace(name=ns.name, labels=ns.labels)
        )

    async def Update(
        self, request: namespaces_pb2.UpdateNamespaceRequest, ctx: grpc.aio.ServicerContext
    ) -> namespaces_pb2.UpdateNamespaceResponse:
        ns = await self._store.update(
            request.namespace.name, dict(request.namespace.labels), list(request.update_mask.paths)
        )
        self._publish(
            ns.name,
            "/namespaces/update",
            events_pb2.NamespaceUpdate(name=ns.name, labels=ns.labels),
        )
        return namespaces_pb2.UpdateNamespaceResponse(
            namespace=namespaces_pb2.Namespace(name=ns.name, labels=ns.labels)
        )

    async def Delete(
        self, request: namespaces_pb2.DeleteNamespaceRequest, ctx: grpc.aio.ServicerContext
    ) -> Empty:
        await self._store.delete(request.name)
        self._publish(
            request.name, "/namespaces/delete", events_pb2.NamespaceDelete(name=request.name)
        )
        return Empty()
