"""The CRI harness itself: the pause image runs as a pod sandbox on the private network,
and the fixture's teardown removes what a test left. On liner this needs the sandboxes group
(skipped while the RPC is UNIMPLEMENTED)."""

from __future__ import annotations

import uuid
from ipaddress import IPv4Address

import grpc
import pytest
from cri_support import CriDaemon, missing_for_pods

from liner_api.runtime.v1 import api_pb2

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(bool(missing_for_pods()), reason=missing_for_pods()),
]


def _pod_config(name: str) -> api_pb2.PodSandboxConfig:
    return api_pb2.PodSandboxConfig(
        metadata=api_pb2.PodSandboxMetadata(
            name=name, uid=str(uuid.uuid4()), namespace="harness", attempt=0
        ),
        hostname=name,
        log_directory="",
        linux=api_pb2.LinuxPodSandboxConfig(),
    )


def test_a_pod_runs_on_the_pause_image_and_the_private_network(cri: CriDaemon) -> None:
    config = _pod_config("harness-pod")
    try:
        pod_id = cri.runtime.RunPodSandbox(
            api_pb2.RunPodSandboxRequest(config=config), timeout=300
        ).pod_sandbox_id
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.UNIMPLEMENTED:
            pytest.skip("this daemon has no pod sandboxes yet")
        raise
    status = cri.runtime.PodSandboxStatus(
        api_pb2.PodSandboxStatusRequest(pod_sandbox_id=pod_id), timeout=60
    ).status
    assert status.state == api_pb2.PodSandboxState.SANDBOX_READY
    assert IPv4Address(status.network.ip) in cri.network.subnet
    # The sandbox image was pulled on demand, and pinned (containerd pins it from 1.7 on).
    image = cri.images.ImageStatus(
        api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image=cri.sandbox_image)), timeout=60
    ).image
    assert list(image.repo_tags) == [cri.sandbox_image]
    assert image.pinned == cri.is_liner
    cri.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=120)
    status = cri.runtime.PodSandboxStatus(
        api_pb2.PodSandboxStatusRequest(pod_sandbox_id=pod_id), timeout=60
    ).status
    assert status.state == api_pb2.PodSandboxState.SANDBOX_NOTREADY
    # Left for the fixture's teardown to remove, as a failed test would leave it.
