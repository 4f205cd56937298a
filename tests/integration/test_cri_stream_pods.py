"""Streaming (Exec, Attach, PortForward) on pods and containers made through the CRI itself,
against linerd and, as the reference (`make test-reference`), Debian's containerd 1.6 with its
CRI plugin: the same calls and clients, the same expectations (cri_support.py's `cri`).

Clients nobody here wrote: crictl (client-go's SPDY) and the `kubernetes` package's WSClient;
WebSocket port-forward through tests/ws_portforward_client.py, written from Kubernetes' protocol
facts (not the server's framing code).

Both daemons speak SPDY/3.1 and WebSocket on these URLs (containerd 1.6's streaming server is
kubelet's library of its time, WebSocket included, for port-forward too). Differences from
containerd, each where it shows:
- The kubernetes WSClient offers v5.channel.k8s.io first; containerd 1.6 knows v4 at most
  (v5 came with Kubernetes 1.29), so its exec answers over v4: same output and exit code.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import pty
import secrets
import socket
import struct
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cri_support import (
    CriDaemon,
    PushedImage,
    missing_for_pods,
    needs_crictl,
    push_busybox_image,
)
from imagebuild import symlink
from registry import Registry
from ws_portforward_client import WsPortForward

from liner_api.runtime.v1 import api_pb2 as pb

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(bool(missing_for_pods()), reason=missing_for_pods()),
]

HTTP_PORT = 8080
INDEX = "served from the pod\n"
# Applets the image links beside cri_support's minimal set.
EXTRA_APPLETS = ("httpd", "head", "seq")


@dataclass(frozen=True)
class Pod:
    id: str
    config: pb.PodSandboxConfig
    web: str  # a container serving INDEX on HTTP_PORT, for exec and port-forward


def _until(check: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def image(
    cri: CriDaemon, registry: Registry, tmp_path_factory: pytest.TempPathFactory
) -> PushedImage:
    pushed = push_busybox_image(
        registry,
        tmp_path_factory.mktemp("cri-stream-img"),
        "liner-test/cri-stream-busybox",
        extra=[symlink(f"bin/{a}", "busybox") for a in EXTRA_APPLETS],
    )
    cri.images.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=pushed.ref())), timeout=120)
    return pushed


def _pod_config(base: Path, name: str, network: int = pb.POD) -> pb.PodSandboxConfig:
    return pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name=name, namespace="default", uid=str(uuid.uuid4())),
        log_directory=str(base / f"logs-{name}-{secrets.token_hex(3)}"),
        linux=pb.LinuxPodSandboxConfig(
            security_context=pb.LinuxSandboxSecurityContext(
                namespace_options=pb.NamespaceOption(network=network)
            )
        ),
    )


def _run_pod(cri: CriDaemon, config: pb.PodSandboxConfig) -> str:
    return cri.runtime.RunPodSandbox(
        pb.RunPodSandboxRequest(config=config), timeout=120
    ).pod_sandbox_id


def _start(
    cri: CriDaemon,
    pod: str,
    pod_config: pb.PodSandboxConfig,
    image: PushedImage,
    name: str,
    command: list[str],
    **kw: Any,
) -> str:
    config = pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name=name),
        image=pb.ImageSpec(image=image.ref()),
        command=command,
        log_path=f"{name}.log",
        **kw,
    )
    cid = cri.runtime.CreateContainer(
        pb.CreateContainerRequest(pod_sandbox_id=pod, config=config, sandbox_config=pod_config),
        timeout=60,
    ).container_id
    cri.runtime.StartContainer(pb.StartContainerRequest(container_id=cid), timeout=60)
    return cid


def _httpd_script(address: str) -> str:
    return (
        f"mkdir -p /www && echo '{INDEX.strip()}' > /www/index.html"
        f" && exec httpd -f -p {address} -h /www"
    )


def _listening_in(cri: CriDaemon, cid: str, port: int) -> bool:
    # The sockets of the container's network namespace (httpd may bind IPv6's any address);
    # state 0A = LISTEN.
    out = cri.runtime.ExecSync(
        pb.ExecSyncRequest(container_id=cid, cmd=["cat", "/proc/net/tcp", "/proc/net/tcp6"]),
        timeout=30,
    ).stdout.decode()
    rows = [r for r in (line.split() for line in out.splitlines()) if r and r[0] != "sl"]
    return any(r[1].endswith(f":{port:04X}") and r[3] == "0A" for r in rows)


@pytest.fixture(scope="module")
def pod(
    cri: CriDaemon, image: PushedImage, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Pod]:
    config = _pod_config(tmp_path_factory.mktemp("stream-pods"), "stream")
    pod_id = _run_pod(cri, config)
    web = _start(cri, pod_id, config, image, "web",
                 ["/bin/sh", "-c", _httpd_script(str(HTTP_PORT))])  # fmt: skip
    _until(lambda: _listening_in(cri, web, HTTP_PORT), "httpd listens in the pod")
    yield Pod(pod_id, config, web)
    cri.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=120)
    cri.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=120)


# -- exec ---------------------------------------------------------------------------------------


@needs_crictl
def test_crictl_exec_stdout_stderr_and_exit_code(cri: CriDaemon, pod: Pod) -> None:
    proc = cri.crictl("exec", pod.web, "echo", "-n", "hello")
    assert (proc.stdout, proc.returncode) == ("hello", 0)
    proc = cri.crictl(
        "exec", pod.web, "sh", "-c", "echo -n out; echo -n err >&2; exit 3", check=False
    )
    assert proc.stdout == "out"
    assert proc.returncode != 0
    assert "err" in proc.stderr and "command terminated with exit code 3" in proc.stderr
    proc = subprocess.run(
        cri.crictl_argv("exec", "-i", pod.web, "sh", "-c", "read x; echo got-$x"),
        input="one\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (proc.returncode, proc.stdout) == (0, "got-one\n"), proc.stderr


@needs_crictl
def test_crictl_exec_it_with_stdin(cri: CriDaemon, pod: Pod, tmp_path: Path) -> None:
    # crictl -t wants a terminal: a pty's slave is its stdin, stdout and stderr.
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        cri.crictl_argv("exec", "-it", pod.web, "sh"),
        stdin=slave,
        stdout=slave,
        stderr=slave,
        start_new_session=True,
        env={**os.environ, "HOME": str(tmp_path)},
    )
    os.close(slave)
    seen = b""
    try:
        os.write(master, b"echo mark-$((6*7)); exit 4\n")
        with contextlib.suppress(OSError):  # EIO once crictl is gone
            while chunk := os.read(master, 4096):
                seen += chunk
        assert proc.wait(120) != 0  # exit 4 reported back
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    assert b"mark-42" in seen, seen


def _wsclient(url: str) -> Any:
    ws_client = pytest.importorskip("kubernetes.stream.ws_client")
    from kubernetes.client import Configuration

    return ws_client.WSClient(Configuration(), url.replace("http://", "ws://"), None, True)


def test_kubernetes_wsclient_exec(cri: CriDaemon, pod: Pod) -> None:
    pytest.importorskip("kubernetes")

    def ws_exec(cmd: list[str], stdin: str = "") -> tuple[str, str, int | None, str]:
        url = cri.runtime.Exec(
            pb.ExecRequest(
                container_id=pod.web, cmd=cmd, stdin=bool(stdin), stdout=True, stderr=True
            ),
            timeout=30,
        ).url
        client = _wsclient(url)
        if stdin:
            client.write_stdin(stdin)
        out, err = "", ""
        while client.is_open():
            client.update(timeout=5)
            out += client.read_stdout() or ""
            err += client.read_stderr() or ""
        out += client.read_stdout() or ""
        err += client.read_stderr() or ""
        return out, err, client.returncode, client.subprotocol

    out, err, code, protocol = ws_exec(["sh", "-c", "echo -n out; echo -n err >&2; exit 3"])
    assert (out, err, code) == ("out", "err", 3)
    # The only difference: containerd 1.6 has no v5 (see the module's docstring).
    assert protocol == ("v5.channel.k8s.io" if cri.is_liner else "v4.channel.k8s.io")
    assert ws_exec(["head", "-c", "5"], stdin="hello, and more")[:3] == ("hello", "", 0)


# -- attach -------------------------------------------------------------------------------------


@needs_crictl
def test_crictl_attach_stdin_once(cri: CriDaemon, pod: Pod, image: PushedImage) -> None:
    """critest's case: a shell reading its stdin; the client writes a line and closes stdin;
    with stdin_once the shell's stdin closes with it, the shell exits and attach ends."""
    cid = _start(cri, pod.id, pod.config, image, f"attach-{secrets.token_hex(3)}",
                 ["/bin/sh"], stdin=True, stdin_once=True)  # fmt: skip
    proc = subprocess.run(
        cri.crictl_argv("attach", "-i", cid),
        input="echo -n hello\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (proc.returncode, proc.stdout) == (0, "hello"), proc.stderr

    def exited() -> bool:
        status = cri.runtime.ContainerStatus(
            pb.ContainerStatusRequest(container_id=cid), timeout=30
        ).status
        return status.state == pb.CONTAINER_EXITED

    _until(exited, "the shell exits")
    status = cri.runtime.ContainerStatus(pb.ContainerStatusRequest(container_id=cid)).status
    assert status.exit_code == 0
    cri.runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=cid), timeout=60)


# -- port-forward -------------------------------------------------------------------------------


@contextlib.contextmanager
def _crictl_port_forward(cri: CriDaemon, pod_id: str, port: int) -> Iterator[int]:
    proc = subprocess.Popen(
        cri.crictl_argv("port-forward", pod_id, f":{port}"),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        line = proc.stdout.readline()
        assert line.startswith("Forwarding from 127.0.0.1:"), line + proc.stderr.read()
        yield int(line.split(":")[1].split()[0])
    finally:
        proc.terminate()
        proc.wait()


def _get(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/index.html", timeout=60) as r:
        return r.read().decode()


@needs_crictl
def test_crictl_port_forward_into_the_pod_20_connections(cri: CriDaemon, pod: Pod) -> None:
    with (
        _crictl_port_forward(cri, pod.id, HTTP_PORT) as local,
        concurrent.futures.ThreadPoolExecutor(20) as pool,
    ):
        assert list(pool.map(lambda _: _get(local), range(20))) == [INDEX] * 20


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening_on_host(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            return True
    except OSError:
        return False


@needs_crictl
def test_crictl_port_forward_host_network(
    cri: CriDaemon, image: PushedImage, tmp_path: Path
) -> None:
    config = _pod_config(tmp_path, "hostnet", network=pb.NODE)
    pod_id = _run_pod(cri, config)
    try:
        port = _free_port()
        _start(cri, pod_id, config, image, "web",
               ["/bin/sh", "-c", _httpd_script(f"127.0.0.1:{port}")])  # fmt: skip
        _until(lambda: _listening_on_host(port), "httpd listens on the host")
        with _crictl_port_forward(cri, pod_id, port) as local:
            assert _get(local) == INDEX
    finally:
        cri.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=120)
        cri.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=120)


# -- port-forward over WebSocket (tests/ws_portforward_client.py) ---------------------------


def _port_forward_url(cri: CriDaemon, pod_id: str, ports: list[int]) -> str:
    return cri.runtime.PortForward(
        pb.PortForwardRequest(pod_sandbox_id=pod_id, port=ports), timeout=30
    ).url


def _ws_http_get(url: str, ports: list[int], protocol: str) -> dict[int, bytes]:
    """One GET per port through one WebSocket session; what each data channel carried."""
    client = WsPortForward(url, protocol)
    try:
        assert client.status == 101, client.head
        request = b"GET /index.html HTTP/1.0\r\n\r\n"
        for i in range(len(ports)):
            client.send(2 * i, request)
        received: dict[int, bytes] = {c: b"" for c in range(2 * len(ports))}
        while (item := client.message()) is not None:
            channel, data = item
            received[channel] += data
        return received
    finally:
        client.close()


@pytest.mark.parametrize("protocol", ["v4.channel.k8s.io", "v4.base64.channel.k8s.io"])
def test_websocket_port_forward(cri: CriDaemon, pod: Pod, protocol: str) -> None:
    ports = [HTTP_PORT, HTTP_PORT]
    received = _ws_http_get(_port_forward_url(cri, pod.id, ports), ports, protocol)
    prefix = struct.pack("<H", HTTP_PORT)
    for i in range(len(ports)):
        data, error = received[2 * i], received[2 * i + 1]
        assert data.startswith(prefix) and error == prefix, (data, error)
        response = data[2:]
        assert response.startswith(b"HTTP/1.") and response.endswith(INDEX.encode()), response


def test_websocket_port_forward_refused_port(cri: CriDaemon, pod: Pod) -> None:
    # Nothing listens on port 1 in the pod: the error channel says so after its port bytes.
    received = _ws_http_get(_port_forward_url(cri, pod.id, [1]), [1], "v4.channel.k8s.io")
    assert received[1].startswith(struct.pack("<H", 1)) and len(received[1]) > 2, received
