"""Pulls through the HTTP proxy named in linerd's environment: a real tinyproxy on loopback.

As a systemd drop-in sets them for containerd: ``HTTP_PROXY`` sends plain-HTTP registry
requests (token server included) to the proxy in absolute form, ``HTTPS_PROXY`` opens a
``CONNECT`` tunnel and TLS (with the host's CA) inside it, ``NO_PROXY`` goes direct.
tinyproxy's own log says what passed through it.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from conftest import BUSYBOX_REPO
from imagebuild import BusyboxLayout
from registry import Registry, free_port
from support import Linerd, ns

from liner_api.liner.services.transfer.v1 import transfer_pb2, transfer_pb2_grpc

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("tinyproxy") is None, reason="tinyproxy is not installed"),
]

REF = f"{BUSYBOX_REPO}:latest"


class TinyProxy:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.log = workdir / "tinyproxy.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        conf = self.workdir / "tinyproxy.conf"
        conf.write_text(
            f'Port {self.port}\nListen 127.0.0.1\nTimeout 60\nLogFile "{self.log}"\n'
            "LogLevel Info\nMaxClients 50\nAllow 127.0.0.1\nDisableViaHeader Yes\n"
        )
        self._proc = subprocess.Popen(
            ["tinyproxy", "-d", "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            assert self._proc.poll() is None, self.log_text()
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise AssertionError(f"tinyproxy did not listen: {self.log_text()}")

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=10)

    def log_text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def requests(self) -> list[str]:
        """The request lines it received: ``GET http://h/p HTTP/1.1``, ``CONNECT h:p ...``."""
        return re.findall(r"Request \(file descriptor \d+\): (.*)", self.log_text())


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[TinyProxy]:
    p = TinyProxy(tmp_path)
    p.start()
    yield p
    p.stop()


@pytest.fixture(scope="module")
def tls_registry(
    busybox_layout: BusyboxLayout, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Registry]:
    reg = Registry("open", tls=True, workdir=tmp_path_factory.mktemp("registry-proxy-tls"))
    reg.start()
    try:
        reg.push_layout(busybox_layout.path, REF, tag="latest")
        yield reg
    finally:
        reg.stop()


def environment(**values: str) -> dict[str, str]:
    """Both spellings (the lower case one wins), so the runner's own settings do not leak in."""
    env = {}
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        env[name] = env[name.upper()] = values.get(name, "")
    return env


def start_daemon(base: Path, env: dict[str, str], config: str = "") -> Linerd:
    args = []
    if config:
        path = base / "config.toml"
        path.write_text("version = 1\n\n" + config)
        args = ["--config", str(path)]
    d = Linerd(base / "d", args)
    d.start(env=env)
    return d


def pull(
    d: Linerd, ref: str, *, plain_http: bool, username: str = "", secret: str = ""
) -> transfer_pb2.PullProgress:
    request = transfer_pb2.PullRequest(reference=ref, plain_http=plain_http)
    if username:
        request.credentials.username, request.credentials.secret = username, secret
    with d.channel() as channel:
        stub = transfer_pb2_grpc.TransferStub(channel)
        final = list(stub.Pull(request, metadata=ns("proxy"), timeout=120))[-1]
    assert final.done
    return final


def test_plain_http_pull_goes_through_the_proxy_in_absolute_form(
    tmp_path: Path, proxy: TinyProxy, registry: Registry, busybox_layout: BusyboxLayout
) -> None:
    d = start_daemon(tmp_path, environment(http_proxy=proxy.url))
    try:
        final = pull(d, registry.ref(REF), plain_http=True)
        first = proxy.requests()
        again = pull(d, registry.ref(REF), plain_http=True)
    finally:
        d.stop()
    assert final.target.digest == busybox_layout.latest.manifest.digest
    assert again.target.digest == final.target.digest
    base = f"http://{registry.host}/v2/{BUSYBOX_REPO}"
    # A tag whose manifest the store lacks: one GET resolves and fetches it, no HEAD first.
    manifests = [r for r in first if "/manifests/" in r]
    assert manifests == [f"GET {base}/manifests/latest HTTP/1.1"]
    blobs = [r for r in first if r.startswith(f"GET {base}/blobs/sha256:")]
    assert len(blobs) == 1 + len(busybox_layout.latest.layers)  # the config and each layer
    # Pulled again, the tag's last manifest is present: a HEAD, as containerd's resolver asks,
    # and nothing downloaded (a GET of a manifest counts against some registries' limits).
    second = proxy.requests()[len(first) :]
    assert second == [f"HEAD {base}/manifests/latest HTTP/1.1"]


def test_token_server_and_registry_both_through_the_proxy(
    tmp_path: Path, proxy: TinyProxy, token_registry: Registry, busybox_layout: BusyboxLayout
) -> None:
    d = start_daemon(tmp_path, environment(http_proxy=proxy.url))
    try:
        final = pull(
            d,
            token_registry.ref(REF),
            plain_http=True,
            username=token_registry.username,
            secret=token_registry.password,
        )
    finally:
        d.stop()
    assert final.target.digest == busybox_layout.latest.manifest.digest
    assert token_registry.token_server is not None
    realm = token_registry.token_server.realm
    seen = proxy.requests()
    assert any(r.startswith(f"GET {realm}?") for r in seen), seen
    assert any(r.startswith(f"GET http://{token_registry.host}/v2/") for r in seen), seen


def test_https_pull_tunnels_through_connect_with_the_hosts_ca(
    tmp_path: Path, proxy: TinyProxy, tls_registry: Registry, busybox_layout: BusyboxLayout
) -> None:
    config = f'[registry.hosts."{tls_registry.host}"]\nca = "{tls_registry.ca_file}"\n'
    d = start_daemon(tmp_path, environment(https_proxy=proxy.url), config)
    try:
        final = pull(d, tls_registry.ref(REF), plain_http=False)
    finally:
        d.stop()
    assert final.target.digest == busybox_layout.latest.manifest.digest
    seen = proxy.requests()
    assert seen and all(r == f"CONNECT {tls_registry.host} HTTP/1.1" for r in seen), seen


def test_https_through_the_proxy_still_verifies_the_certificate(
    tmp_path: Path, proxy: TinyProxy, tls_registry: Registry
) -> None:
    d = start_daemon(tmp_path, environment(https_proxy=proxy.url))  # no CA configured
    try:
        with pytest.raises(grpc.RpcError) as info:
            pull(d, tls_registry.ref(REF), plain_http=False)
    finally:
        d.stop()
    assert "TLS verification failed" in (info.value.details() or "")
    assert f"CONNECT {tls_registry.host} HTTP/1.1" in proxy.requests()


def test_no_proxy_goes_direct(
    tmp_path: Path, proxy: TinyProxy, registry: Registry, busybox_layout: BusyboxLayout
) -> None:
    env = environment(http_proxy=proxy.url, https_proxy=proxy.url, no_proxy="127.0.0.0/8")
    d = start_daemon(tmp_path, env)
    try:
        final = pull(d, registry.ref(REF), plain_http=True)
    finally:
        d.stop()
    assert final.target.digest == busybox_layout.latest.manifest.digest
    assert proxy.requests() == []
