"""The generated CRI (runtime.v1) bindings: wire facts kubelet depends on, and one call.

No Debian package ships kubernetes/cri-api's api.proto, so there is no drift test
against it (as tests/unit/test_proto_drift.py has for containerd); these are facts
taken from the upstream file and from shared/reference/cri.md, checked on the
descriptors protoc built from api/proto/runtime/v1/api.proto.
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from pathlib import Path

import grpc
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if importlib.util.find_spec("liner_api") is None:  # not installed / no PYTHONPATH
    sys.path.insert(0, str(REPO_ROOT / "api"))

from liner_api.runtime.v1 import api_pb2, api_pb2_grpc  # noqa: E402

pytestmark = pytest.mark.unit


def _fields(message: type) -> dict[str, int]:
    return {f.name: f.number for f in message.DESCRIPTOR.fields}


def test_package_and_services() -> None:
    assert api_pb2.DESCRIPTOR.package == "runtime.v1"
    runtime = api_pb2.DESCRIPTOR.services_by_name["RuntimeService"]
    image = api_pb2.DESCRIPTOR.services_by_name["ImageService"]
    assert runtime.full_name == "runtime.v1.RuntimeService"
    assert image.full_name == "runtime.v1.ImageService"
    # Every call of the 1.29 CRI is there (later ones are extra, not checked here).
    assert {
        "Version",
        "RunPodSandbox",
        "StopPodSandbox",
        "RemovePodSandbox",
        "PodSandboxStatus",
        "ListPodSandbox",
        "CreateContainer",
        "StartContainer",
        "StopContainer",
        "RemoveContainer",
        "ListContainers",
        "ContainerStatus",
        "UpdateContainerResources",
        "ReopenContainerLog",
        "ExecSync",
        "Exec",
        "Attach",
        "PortForward",
        "ContainerStats",
        "ListContainerStats",
        "PodSandboxStats",
        "ListPodSandboxStats",
        "UpdateRuntimeConfig",
        "Status",
        "CheckpointContainer",
        "GetContainerEvents",
        "ListMetricDescriptors",
        "ListPodSandboxMetrics",
        "RuntimeConfig",
    } <= set(runtime.methods_by_name)
    assert set(image.methods_by_name) >= {
        "ListImages",
        "ImageStatus",
        "PullImage",
        "RemoveImage",
        "ImageFsInfo",
    }
    events = runtime.methods_by_name["GetContainerEvents"]
    assert events.server_streaming
    assert not events.client_streaming
    assert events.output_type.full_name == "runtime.v1.ContainerEventResponse"


def test_enum_values() -> None:
    assert dict(api_pb2.NamespaceMode.items()) == {
        "POD": 0,
        "CONTAINER": 1,
        "NODE": 2,
        "TARGET": 3,
    }
    assert dict(api_pb2.ContainerState.items()) == {
        "CONTAINER_CREATED": 0,
        "CONTAINER_RUNNING": 1,
        "CONTAINER_EXITED": 2,
        "CONTAINER_UNKNOWN": 3,
    }
    assert dict(api_pb2.PodSandboxState.items()) == {"SANDBOX_READY": 0, "SANDBOX_NOTREADY": 1}
    # Nested in SecurityProfile, with upstream's CamelCase value names.
    profile = api_pb2.SecurityProfile.ProfileType
    assert api_pb2.SecurityProfile.DESCRIPTOR.enum_types_by_name["ProfileType"].full_name == (
        "runtime.v1.SecurityProfile.ProfileType"
    )
    assert dict(profile.items()) == {"RuntimeDefault": 0, "Unconfined": 1, "Localhost": 2}
    assert dict(api_pb2.CgroupDriver.items()) == {"SYSTEMD": 0, "CGROUPFS": 1}
    assert dict(api_pb2.MountPropagation.items()) == {
        "PROPAGATION_PRIVATE": 0,
        "PROPAGATION_HOST_TO_CONTAINER": 1,
        "PROPAGATION_BIDIRECTIONAL": 2,
    }
    assert dict(api_pb2.Protocol.items()) == {"TCP": 0, "UDP": 1, "SCTP": 2}
    assert dict(api_pb2.ContainerEventType.items()) == {
        "CONTAINER_CREATED_EVENT": 0,
        "CONTAINER_STARTED_EVENT": 1,
        "CONTAINER_STOPPED_EVENT": 2,
        "CONTAINER_DELETED_EVENT": 3,
    }
    assert dict(api_pb2.MetricType.items()) == {"COUNTER": 0, "GAUGE": 1}


def test_field_numbers() -> None:
    assert _fields(api_pb2.VersionResponse) == {
        "version": 1,
        "runtime_name": 2,
        "runtime_version": 3,
        "runtime_api_version": 4,
    }
    assert _fields(api_pb2.NamespaceOption) == {
        "network": 1,
        "pid": 2,
        "ipc": 3,
        "target_id": 4,
        "userns_options": 5,
    }
    assert _fields(api_pb2.PodSandboxMetadata) == {
        "name": 1,
        "uid": 2,
        "namespace": 3,
        "attempt": 4,
    }
    assert _fields(api_pb2.SecurityProfile) == {"profile_type": 1, "localhost_ref": 2}
    assert _fields(api_pb2.Capability) == {
        "add_capabilities": 1,
        "drop_capabilities": 2,
        "add_ambient_capabilities": 3,
    }
    image_spec = _fields(api_pb2.ImageSpec)
    assert (image_spec["image"], image_spec["annotations"]) == (1, 2)
    assert (image_spec["user_specified_image"], image_spec["runtime_handler"]) == (18, 19)
    auth = _fields(api_pb2.AuthConfig)
    assert auth == {
        "username": 1,
        "password": 2,
        "auth": 3,
        "server_address": 4,
        "identity_token": 5,
        "registry_token": 6,
    }
    container_config = _fields(api_pb2.ContainerConfig)
    assert container_config["metadata"] == 1
    assert container_config["command"] == 3
    assert container_config["args"] == 4
    assert container_config["log_path"] == 11
    assert container_config["CDI_devices"] == 17  # upstream's spelling, kept
    mount = _fields(api_pb2.Mount)
    assert (mount["container_path"], mount["host_path"], mount["propagation"]) == (1, 2, 5)
    assert (mount["uidMappings"], mount["gidMappings"]) == (6, 7)  # upstream's spelling
    assert _fields(api_pb2.Image)["size"] == 4
    status = _fields(api_pb2.ContainerStatus)
    assert (status["state"], status["exit_code"], status["image_ref"]) == (3, 7, 9)
    assert (status["reason"], status["message"]) == (10, 11)
    assert _fields(api_pb2.LinuxRuntimeConfiguration) == {"cgroup_driver": 1}
    # The container environment: bytes since cri-api v0.35.7/v0.36.2, same wire type
    # as the string it was before.
    value = api_pb2.KeyValue.DESCRIPTOR.fields_by_name["value"]
    assert value.number == 2
    assert value.type == value.TYPE_BYTES


def test_round_trip_of_a_pod_config() -> None:
    config = api_pb2.PodSandboxConfig(
        metadata=api_pb2.PodSandboxMetadata(name="p", uid="u", namespace="default"),
        labels={"io.kubernetes.pod.uid": "u"},
        linux=api_pb2.LinuxPodSandboxConfig(
            security_context=api_pb2.LinuxSandboxSecurityContext(
                namespace_options=api_pb2.NamespaceOption(pid=api_pb2.CONTAINER),
                seccomp=api_pb2.SecurityProfile(
                    profile_type=api_pb2.SecurityProfile.Localhost, localhost_ref="/p.json"
                ),
            )
        ),
    )
    wire = config.SerializeToString()
    assert api_pb2.PodSandboxConfig.FromString(wire) == config


class _Runtime(api_pb2_grpc.RuntimeServiceServicer):
    async def Version(
        self, request: api_pb2.VersionRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.VersionResponse:
        return api_pb2.VersionResponse(
            version="0.1.0",
            runtime_name="liner-test",
            runtime_version=request.version or "none",
            runtime_api_version="v1",
        )


async def _call_version(socket: Path) -> tuple[api_pb2.VersionResponse, grpc.StatusCode]:
    server = grpc.aio.server()
    api_pb2_grpc.add_RuntimeServiceServicer_to_server(_Runtime(), server)
    address = f"unix://{socket}"
    assert server.add_insecure_port(address) == 1  # grpcio answers 1 for a unix socket
    await server.start()
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = api_pb2_grpc.RuntimeServiceStub(channel)
            reply = await stub.Version(api_pb2.VersionRequest(version="v1"))
            # A call the servicer does not override answers UNIMPLEMENTED (cri.md).
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Status(api_pb2.StatusRequest())
            return reply, err.value.code()
    finally:
        await server.stop(None)


def test_version_over_a_unix_socket(tmp_path: Path) -> None:
    reply, unimplemented = asyncio.run(_call_version(tmp_path / "cri.sock"))
    assert reply == api_pb2.VersionResponse(
        version="0.1.0",
        runtime_name="liner-test",
        runtime_version="v1",
        runtime_api_version="v1",
    )
    assert unimplemented == grpc.StatusCode.UNIMPLEMENTED
