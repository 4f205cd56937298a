from __future__ import annotations

import grpc
from google.protobuf.empty_pb2 import Empty

from liner_api.containerd.services.version.v1 import version_pb2, version_pb2_grpc
from linerd import __version__

REVISION = "liner"


class VersionService(version_pb2_grpc.VersionServicer):
    async def Version(
        self, request: Empty, ctx: grpc.aio.ServicerContext
    ) -> version_pb2.VersionResponse:
        return version_pb2.VersionResponse(version=__version__, revision=REVISION)
