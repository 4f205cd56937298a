"""The CRI's `info` group: Version, Status, RuntimeConfig, UpdateRuntimeConfig."""

from __future__ import annotations

import json
from typing import Protocol

import structlog

from liner_api.runtime.v1 import api_pb2
from linerd.cri.cni import NetworkStatus

log = structlog.get_logger("linerd.cri")

# The CRI version the kubelet asks about (containerd answers the same "0.1.0").
KUBELET_API_VERSION = "0.1.0"
RUNTIME_NAME = "liner"
RUNTIME_API_VERSION = "v1"

RUNTIME_READY = "RuntimeReady"
NETWORK_READY = "NetworkReady"

CGROUP_DRIVERS = {
    "systemd": api_pb2.CgroupDriver.SYSTEMD,
    "cgroupfs": api_pb2.CgroupDriver.CGROUPFS,
}


class NetworkStatusSource(Protocol):
    async def status(self) -> NetworkStatus: ...


class Info:
    """What the runtime is and whether it is ready. `network` is the CNI client (its status
    is NetworkReady); `cgroup_driver` is `[cri] cgroup_driver`."""

    def __init__(self, network: NetworkStatusSource, cgroup_driver: str, version: str) -> None:
        self._network = network
        self._cgroup_driver = CGROUP_DRIVERS[cgroup_driver]
        self._version = version
        # What kubelet last told us in UpdateRuntimeConfig (the node's pod CIDR).
        self.pod_cidr = ""

    async def version(self, request: api_pb2.VersionRequest) -> api_pb2.VersionResponse:
        return api_pb2.VersionResponse(
            version=KUBELET_API_VERSION,
            runtime_name=RUNTIME_NAME,
            runtime_version=self._version,
            runtime_api_version=RUNTIME_API_VERSION,
        )

    async def status(self, request: api_pb2.StatusRequest) -> api_pb2.StatusResponse:
        network = await self._network.status()
        conditions = [
            api_pb2.RuntimeCondition(type=RUNTIME_READY, status=True),
            api_pb2.RuntimeCondition(
                type=NETWORK_READY,
                status=network.ready,
                reason=network.reason,
                message=network.message,
            ),
        ]
        response = api_pb2.StatusResponse(status=api_pb2.RuntimeStatus(conditions=conditions))
        if request.verbose:
            response.info["network"] = json.dumps(
                {
                    "ready": network.ready,
                    "name": network.network,
                    "source": network.source,
                    "podCIDR": self.pod_cidr,
                }
            )
        return response

    async def runtime_config(
        self, request: api_pb2.RuntimeConfigRequest
    ) -> api_pb2.RuntimeConfigResponse:
        return api_pb2.RuntimeConfigResponse(
            linux=api_pb2.LinuxRuntimeConfiguration(cgroup_driver=self._cgroup_driver)
        )

    async def update_runtime_config(
        self, request: api_pb2.UpdateRuntimeConfigRequest
    ) -> api_pb2.UpdateRuntimeConfigResponse:
        cidr = request.runtime_config.network_config.pod_cidr
        if cidr and cidr != self.pod_cidr:
            log.info("pod CIDR updated", pod_cidr=cidr)
            self.pod_cidr = cidr
        return api_pb2.UpdateRuntimeConfigResponse()
