"""Pods and containers over linerd's socket (runtime.v1 stubs and crictl), against linerd and,
as the reference (`make test-reference`), Debian's containerd with its CRI plugin: the same
calls, the same expectations (cri_support.py's `cri` fixture).

Differences from containerd, each where it shows:
- containerd 1.6 answers StopPodSandbox of an unknown id with NotFound, as liner does; its
  RemovePodSandbox of an unknown id is OK, as liner's.
- ExecSync timeout: both answer an error (liner DeadlineExceeded; containerd Unknown/
  DeadlineExceeded depending on the version): only "an error" is asserted.
"""

from __future__ import annotations

import json
import re
import socket
import time
import uuid
from pathlib import Path

import grpc
import pytest
from cri_support import CriDaemon, PushedImage, missing_for_pods, needs_crictl, push_busybox_image
from registry import Registry

from liner_api.runtime.v1 import api_pb2 as pb

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(bool(missing_for_pods()), reason=missing_for_pods()),
]

LOG_LINE = re.compile(r"^(\S+) (stdout|stderr) (F|P) (.*)$")


@pytest.fixture(scope="module")
def busybox(
    cri: CriDaemon, registry: Registry, tmp_path_factory: pytest.TempPathFactory
) -> PushedImage:
    image = push_busybox_image(
        registry, tmp_path_factory.mktemp("cri-pods-img"), "liner-test/cri-pods-busybox"
    )
    return image


def _pull(daemon: CriDaemon, ref: str) -> None:
    daemon.images.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=ref)), timeout=120)


def _pod_config(base: Path, name: str, **kw: object) -> pb.PodSandboxConfig:
    log_dir = base / "pod-logs" / f"{name}-{uuid.uuid4().hex[:6]}"
    return pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name=name, namespace="default", uid=str(uuid.uuid4())),
        log_directory=str(log_dir),
        labels={"app": name},
        annotations={"note": "x"},
        **kw,  # type: ignore[arg-type]
    )


def _container(image: str, name: str, script: str) -> pb.ContainerConfig:
    return pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name=name),
        image=pb.ImageSpec(image=image),
        command=["/bin/sh", "-c", script],
        log_path=f"{name}.log",
        labels={"c": name},
    )


def _until(check, what: str, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.05)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_pod_and_container_over_the_socket(
    cri: CriDaemon, busybox: PushedImage, tmp_path: Path
) -> None:
    rt = cri.runtime
    image = busybox.ref()
    _pull(cri, image)
    host_port = _free_port()
    config = _pod_config(
        tmp_path,
        "sock",
        hostname="sock-host",
        dns_config=pb.DNSConfig(
            servers=["10.10.10.10"], searches=["google.com"], options=["ndots:8"]
        ),
        port_mappings=[pb.PortMapping(container_port=80, host_port=host_port)],
    )
    pod = rt.RunPodSandbox(pb.RunPodSandboxRequest(config=config), timeout=120).pod_sandbox_id
    status = rt.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pod), timeout=30)
    assert status.status.state == pb.SANDBOX_READY and status.status.network.ip
    assert status.status.metadata == config.metadata and status.status.created_at > 0
    assert dict(status.status.labels) == {"app": "sock"}

    web = _container(
        image, "web", "mkdir -p /www && echo served > /www/index.html && "
        "httpd -p 80 -h /www; echo started; exec sleep 1000",
    )  # fmt: skip
    cid = rt.CreateContainer(
        pb.CreateContainerRequest(pod_sandbox_id=pod, config=web, sandbox_config=config),
        timeout=60,
    ).container_id
    assert len(cid) == 64
    rt.StartContainer(pb.StartContainerRequest(container_id=cid), timeout=60)
    st = rt.ContainerStatus(pb.ContainerStatusRequest(container_id=cid), timeout=30).status
    assert st.state == pb.CONTAINER_RUNNING and st.image.image == image and st.image_ref
    assert st.log_path == str(Path(config.log_directory) / "web.log")

    out = rt.ExecSync(pb.ExecSyncRequest(container_id=cid, cmd=["echo", "-n", "hello"]), timeout=30)
    assert (out.stdout, out.stderr, out.exit_code) == (b"hello", b"", 0)
    out = rt.ExecSync(
        pb.ExecSyncRequest(container_id=cid, cmd=["cat", "/etc/resolv.conf"]), timeout=30
    )
    lines = out.stdout.decode().splitlines()
    assert "nameserver 10.10.10.10" in lines and "search google.com" in lines
    assert "options ndots:8" in lines
    out = rt.ExecSync(pb.ExecSyncRequest(container_id=cid, cmd=["hostname"]), timeout=30)
    assert out.stdout == b"sock-host\n"
    with pytest.raises(grpc.RpcError):
        rt.ExecSync(
            pb.ExecSyncRequest(container_id=cid, cmd=["sleep", "4321"], timeout=1), timeout=30
        )

    # hostPort over 127.0.0.1 (portmap's DNAT), once httpd listens.
    def served() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", host_port), timeout=5) as s:
                s.sendall(b"GET /index.html HTTP/1.0\r\n\r\n")
                return b"served" in s.recv(65536) + s.recv(65536)
        except OSError:
            return False

    _until(served, "the pod serves on its host port")

    listed = rt.ListContainers(
        pb.ListContainersRequest(filter=pb.ContainerFilter(pod_sandbox_id=pod)), timeout=30
    ).containers
    assert [c.id for c in listed] == [cid]

    rt.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=2), timeout=60)
    st = rt.ContainerStatus(pb.ContainerStatusRequest(container_id=cid), timeout=30).status
    assert st.state == pb.CONTAINER_EXITED and st.finished_at >= st.started_at > 0
    log = Path(st.log_path).read_text().splitlines()
    parsed = [LOG_LINE.match(line) for line in log]
    assert all(parsed) and ("stdout", "F", "started") in [m.groups()[1:] for m in parsed if m]

    rt.RemoveContainer(pb.RemoveContainerRequest(container_id=cid), timeout=60)
    rt.RemoveContainer(pb.RemoveContainerRequest(container_id=cid), timeout=60)
    rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod), timeout=60)
    st2 = rt.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pod), timeout=30)
    assert st2.status.state == pb.SANDBOX_NOTREADY
    rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod), timeout=60)
    rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod), timeout=60)
    rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod), timeout=60)
    with pytest.raises(grpc.RpcError) as e:
        rt.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pod), timeout=30)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_unknown_image_and_pod(cri: CriDaemon, busybox: PushedImage, tmp_path: Path) -> None:
    rt = cri.runtime
    config = _pod_config(tmp_path, "bad")
    pod = rt.RunPodSandbox(pb.RunPodSandboxRequest(config=config), timeout=120).pod_sandbox_id
    try:
        with pytest.raises(grpc.RpcError) as e:
            rt.CreateContainer(
                pb.CreateContainerRequest(
                    pod_sandbox_id=pod,
                    config=_container("127.0.0.1:1/none/such:1", "x", "true"),
                    sandbox_config=config,
                ),
                timeout=60,
            )
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as e:
            rt.ContainerStatus(pb.ContainerStatusRequest(container_id="0" * 64), timeout=30)
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod), timeout=60)
        rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod), timeout=60)


@needs_crictl
def test_crictl_runp_create_start_exec_stop_rm(
    cri: CriDaemon, busybox: PushedImage, tmp_path: Path
) -> None:
    image = busybox.ref()
    _pull(cri, image)
    pod_json = tmp_path / "pod.json"
    pod_json.write_text(
        json.dumps(
            {
                "metadata": {
                    "name": "crictl-pod",
                    "namespace": "default",
                    "uid": str(uuid.uuid4()),
                },
                "hostname": "crictl-host",
                "log_directory": str(tmp_path / "logs"),
                "linux": {},
            }
        )
    )
    ctr_json = tmp_path / "ctr.json"
    ctr_json.write_text(
        json.dumps(
            {
                "metadata": {"name": "box"},
                "image": {"image": image},
                "command": ["/bin/sh", "-c", "echo hi from crictl; exec sleep 1000"],
                "log_path": "box.log",
            }
        )
    )
    pod = cri.crictl("runp", str(pod_json)).stdout.strip()
    try:
        cid = cri.crictl("create", pod, str(ctr_json), str(pod_json)).stdout.strip()
        cri.crictl("start", cid)
        ps = cri.crictl("ps", "-o", "json").stdout
        assert cid in [c["id"] for c in json.loads(ps)["containers"]]
        inspect = json.loads(cri.crictl("inspect", cid).stdout)
        assert inspect["status"]["state"] == "CONTAINER_RUNNING"
        # crictl prints stdout and stderr, each followed by a newline.
        assert cri.crictl("exec", "-s", cid, "hostname").stdout.strip() == "crictl-host"
        pods = json.loads(cri.crictl("pods", "-o", "json").stdout)["items"]
        assert [p["state"] for p in pods if p["id"] == pod] == ["SANDBOX_READY"]
        stats = json.loads(cri.crictl("stats", "-o", "json", "--id", cid).stdout)["stats"]
        assert [s["attributes"]["id"] for s in stats] == [cid]
        assert int(stats[0]["memory"]["workingSetBytes"]["value"]) > 0
        cri.crictl("stop", cid)
        assert "hi from crictl" in cri.crictl("logs", cid).stdout
        cri.crictl("rm", cid)
    finally:
        cri.crictl("stopp", pod)
        cri.crictl("rmp", pod)
    assert pod not in cri.crictl("pods", "-q").stdout
