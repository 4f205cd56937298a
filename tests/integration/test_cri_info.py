"""The CRI's info RPCs (Version, Status, RuntimeConfig, UpdateRuntimeConfig) over the socket,
against linerd and, as the reference (`make test-reference`), Debian's containerd 1.6.

Differences from containerd, each where it shows:
- runtime_name/runtime_version name the daemon ("liner" and liner's version).
- containerd 1.6 has no RuntimeConfig RPC (UNIMPLEMENTED); liner reports its cgroup driver.
- Status(verbose) info keys differ (containerd dumps its whole config; liner its network).
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from cri_support import CONTAINERD, CriDaemon, needs_crictl

from liner_api.runtime.v1 import api_pb2

pytestmark = pytest.mark.integration


def _conditions(cri: CriDaemon) -> dict[str, api_pb2.RuntimeCondition]:
    status = cri.runtime.Status(api_pb2.StatusRequest(), timeout=30).status
    return {c.type: c for c in status.conditions}


def _until(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll the daemon's answer until it says `what` (containerd watches the conf dir)."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.05)


def test_version_fields_are_all_set(cri: CriDaemon) -> None:
    version = cri.runtime.Version(api_pb2.VersionRequest(version="0.1.0"), timeout=30)
    # kubelet refuses a runtime whose Version leaves any of the four empty.
    assert version.version == "0.1.0"
    assert version.runtime_api_version == "v1"
    assert version.runtime_name == ("containerd" if cri.kind == CONTAINERD else "liner")
    assert version.runtime_version


def test_status_is_ready_with_a_cni_config(cri: CriDaemon) -> None:
    conditions = _conditions(cri)
    assert conditions["RuntimeReady"].status is True
    assert conditions["NetworkReady"].status is True


@pytest.fixture
def without_cni_config(cri: CriDaemon) -> Iterator[None]:
    # The file moves, not the directory: containerd watches the directory with inotify.
    # It comes back written, not renamed: containerd 1.6 reloads on write, rename and remove
    # events, never on create (what a rename into the directory is).
    conflist = cri.network.conflist
    text = conflist.read_text()
    conflist.rename(conflist.parent.parent / conflist.name)
    try:
        yield
    finally:
        conflist.write_text(text)
        (conflist.parent.parent / conflist.name).unlink()
        _until(lambda: _conditions(cri)["NetworkReady"].status, "the network is ready again")


def test_network_not_ready_while_no_cni_config_loads(
    cri: CriDaemon, without_cni_config: None
) -> None:
    _until(lambda: not _conditions(cri)["NetworkReady"].status, "NetworkReady is false")
    network = _conditions(cri)["NetworkReady"]
    assert network.reason == "NetworkPluginNotReady"
    assert network.message
    assert _conditions(cri)["RuntimeReady"].status is True


def test_runtime_config_reports_the_cgroup_driver(cri: CriDaemon) -> None:
    if cri.kind == CONTAINERD:
        # containerd 1.6 predates the RPC (1.7 too; 2.0 has it).
        with pytest.raises(grpc.RpcError) as e:
            cri.runtime.RuntimeConfig(api_pb2.RuntimeConfigRequest(), timeout=30)
        assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED
        return
    response = cri.runtime.RuntimeConfig(api_pb2.RuntimeConfigRequest(), timeout=30)
    assert response.linux.cgroup_driver == api_pb2.CgroupDriver.CGROUPFS


def test_update_runtime_config_accepts_the_pod_cidr(cri: CriDaemon) -> None:
    request = api_pb2.UpdateRuntimeConfigRequest(
        runtime_config=api_pb2.RuntimeConfig(
            network_config=api_pb2.NetworkConfig(pod_cidr="10.244.1.0/24")
        )
    )
    cri.runtime.UpdateRuntimeConfig(request, timeout=30)
    # An empty CIDR is accepted and changes nothing.
    cri.runtime.UpdateRuntimeConfig(api_pb2.UpdateRuntimeConfigRequest(), timeout=30)
    if cri.is_liner:
        info = cri.runtime.Status(api_pb2.StatusRequest(verbose=True), timeout=30).info
        assert json.loads(info["network"])["podCIDR"] == "10.244.1.0/24"


def test_rpcs_nobody_serves_are_unimplemented(cri: CriDaemon) -> None:
    with pytest.raises(grpc.RpcError) as e:
        cri.runtime.ListMetricDescriptors(api_pb2.ListMetricDescriptorsRequest(), timeout=30)
    assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED
    with pytest.raises(grpc.RpcError) as e:
        # A server-streaming RPC: the error comes with the first read.
        next(iter(cri.runtime.GetContainerEvents(api_pb2.GetEventsRequest(), timeout=30)))
    assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_errors_carry_their_codes_and_metrics_stay_bounded(cri: CriDaemon) -> None:
    if not cri.is_liner:
        pytest.skip("liner's interceptor and metrics")
    with pytest.raises(grpc.RpcError) as e:
        cri.images.ImageStatus(api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec()), timeout=30)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # A method the proto does not have never reaches the interceptor's observers.
    unknown = cri.channel.unary_unary(
        "/runtime.v1.RuntimeService/NoSuchMethod",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    with pytest.raises(grpc.RpcError) as e:
        unknown(b"", timeout=30)
    assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert cri.metrics_address
    with urllib.request.urlopen(f"http://{cri.metrics_address}/v1/metrics", timeout=10) as r:
        text = r.read().decode()
    assert (
        'liner_grpc_requests_total{code="INVALID_ARGUMENT",method="ImageStatus",'
        'service="runtime.v1.ImageService"} 1.0'
    ) in text
    assert "NoSuchMethod" not in text


@needs_crictl
def test_crictl_version_and_info(cri: CriDaemon) -> None:
    out = cri.crictl("version").stdout
    assert "RuntimeApiVersion:  v1" in out
    assert ("RuntimeName:  liner" in out) == cri.is_liner
    info = json.loads(cri.crictl("info").stdout)
    conditions = {c["type"]: c["status"] for c in info["status"]["conditions"]}
    assert conditions == {"RuntimeReady": True, "NetworkReady": True}


def test_status_files_are_private(cri: CriDaemon) -> None:
    # The network the daemon reports is the test's own (never /etc/cni/net.d's).
    if not cri.is_liner:
        pytest.skip("liner's verbose Status")
    info = cri.runtime.Status(api_pb2.StatusRequest(verbose=True), timeout=30).info
    network = json.loads(info["network"])
    assert network["name"] == cri.network.name
    assert Path(network["source"]).parent == cri.network.conf_dir
