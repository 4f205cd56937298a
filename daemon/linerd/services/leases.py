from __future__ import annotations

import grpc
from google.protobuf.empty_pb2 import Empty

from liner_api.containerd.services.leases.v1 import leases_pb2, leases_pb2_grpc
from linerd import context
from linerd.core import filters
from linerd.core.types import Lease, LeaseResource
from linerd.local.leases import Leases
from linerd.services.convert import timestamp


def _lease(lease: Lease) -> leases_pb2.Lease:
    return leases_pb2.Lease(
        id=lease.id, created_at=timestamp(lease.created_at), labels=lease.labels
    )


def _resource(resource: leases_pb2.Resource) -> LeaseResource:
    return LeaseResource(id=resource.id, type=resource.type)


class LeasesService(leases_pb2_grpc.LeasesServicer):
    def __init__(self, local: Leases) -> None:
        self._local = local

    async def Create(
        self, request: leases_pb2.CreateRequest, ctx: grpc.aio.ServicerContext
    ) -> leases_pb2.CreateResponse:
        lease = await self._local.create(context.namespace(), request.id, dict(request.labels))
        return leases_pb2.CreateResponse(lease=_lease(lease))

    async def Delete(
        self, request: leases_pb2.DeleteRequest, ctx: grpc.aio.ServicerContext
    ) -> Empty:
        await self._local.delete(context.namespace(), request.id, request.sync)
        return Empty()

    async def List(
        self, request: leases_pb2.ListRequest, ctx: grpc.aio.ServicerContext
    ) -> leases_pb2.ListResponse:
        match = filters.parse_all(list(request.filters))
        leases = [
            _lease(lease)
            for lease in await self._local.list(context.namespace())
            if match.match(filters.dict_adaptor({"id": lease.id}, lease.labels))
        ]
        return leases_pb2.ListResponse(leases=leases)

    async def AddResource(
        self, request: leases_pb2.AddResourceRequest, ctx: grpc.aio.ServicerContext
    ) -> Empty:
        await self._local.add_resource(context.namespace(), request.id, _resource(request.resource))
        return Empty()

    async def DeleteResource(
        self, request: leases_pb2.DeleteResourceRequest, ctx: grpc.aio.ServicerContext
    ) -> Empty:
        await self._local.delete_resource(
            context.namespace(), request.id, _resource(request.resource)
        )
        return Empty()

    async def ListResources(
        self, request: leases_pb2.ListResourcesRequest, ctx: grpc.aio.ServicerContext
    ) -> leases_pb2.ListResourcesResponse:
        resources = await self._local.list_resources(context.namespace(), request.id)
        return leases_pb2.ListResourcesResponse(
            resources=[leases_pb2.Resource(id=r.id, type=r.type) for r in resources]
        )
