"""Pod networking with the real Debian CNI plugins (bridge + host-local + portmap; lo is set up
in process, as the loopback plugin would).

Each test gets its own conf dir, bridge `lnrt<hex>`, a free 10.88.<n>.0/24 subnet, host-local
data dir and result cache, so nothing touches /etc/cni or /var/lib/cni, and afterwards nothing
is left: no netns mount, no lease, no iptables rule naming the sandbox, no bridge.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any, TypeVar

import pytest

from linerd.cri import netns
from linerd.cri.cni import CNI, DEFAULT_BIN_DIRS, PodRef, PortMapping
from linerd.errdefs import FailedPrecondition, NotFound

PLUGINS = ("bridge", "host-local", "portmap")
BUSYBOX = shutil.which("busybox")
T = TypeVar("T")


def _missing() -> str:
    if os.geteuid() != 0:
        return "needs root (network namespaces, bridges, iptables)"
    for plugin in PLUGINS:
        if not any(os.access(Path(d) / plugin, os.X_OK) for d in DEFAULT_BIN_DIRS):
            return (
                f"CNI plugin {plugin} not found in {DEFAULT_BIN_DIRS} (containernetworking-plugins)"
            )
    for tool in ("iptables", "iptables-save", "ip"):
        if shutil.which(tool) is None:
            return f"{tool} not found (portmap shells out to iptables)"
    if BUSYBOX is None:
        return "busybox not found (busybox-static)"
    return ""


pytestmark = [pytest.mark.integration, pytest.mark.skipif(bool(_missing()), reason=_missing())]


@dataclass
class Net:
    name: str
    bridge: str
    subnet: IPv4Network
    conf_dir: Path
    cache_dir: Path
    ipam_dir: Path
    netns_dir: Path
    chains: frozenset[str] = frozenset()  # CNI's per-container chains before the test

    def client(self, conf_dir: Path | None = None) -> CNI:
        return CNI(conf_dir=conf_dir or self.conf_dir, cache_dir=self.cache_dir)

    def write(self, plugins: list[dict], file: str = "10-liner.conflist") -> None:
        conf = {"cniVersion": "1.0.0", "name": self.name, "plugins": plugins}
        (self.conf_dir / file).write_text(json.dumps(conf))

    def bridge_plugin(self) -> dict:
        return {
            "type": "bridge",
            "bridge": self.bridge,
            "isGateway": True,
            # Masquerading needs the netns at DEL to find its rules (bridge 1.1.1); pods here
            # never leave the host, so the test keeps the host's NAT table out of it.
            "ipMasq": False,
            "hairpinMode": True,
            "ipam": {
                "type": "host-local",
                "dataDir": str(self.ipam_dir),
                "ranges": [[{"subnet": str(self.subnet)}]],
                "routes": [{"dst": "0.0.0.0/0"}],
            },
        }

    def leases(self) -> list[str]:
        d = self.ipam_dir / self.name
        return sorted(p.name for p in d.iterdir() if _is_ip(p.name)) if d.exists() else []


def _is_ip(name: str) -> bool:
    try:
        IPv4Address(name)
    except ValueError:
        return False
    return True


def _free_subnet() -> IPv4Network:
    used = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True).stdout
    while True:
        third = secrets.randbelow(250) + 3
        if f"10.88.{third}." not in used:
            return IPv4Network(f"10.88.{third}.0/24")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _link_exists(name: str) -> bool:
    return subprocess.run(["ip", "link", "show", name], capture_output=True).returncode == 0


def _ip_forward() -> str:
    return Path("/proc/sys/net/ipv4/ip_forward").read_text().strip()


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Net]:
    tag = secrets.token_hex(3)
    n = Net(
        name=f"lnrt-{tag}",
        bridge=f"lnrt{tag}",
        subnet=_free_subnet(),
        conf_dir=tmp_path / "net.d",
        cache_dir=tmp_path / "cache",
        ipam_dir=tmp_path / "ipam",
        netns_dir=tmp_path / "netns",
    )
    n.conf_dir.mkdir()
    n.write([n.bridge_plugin(), {"type": "portmap", "capabilities": {"portMappings": True}}])
    forward = _ip_forward()  # bridge's isGateway turns forwarding on; give the host its value back
    n.chains = _cni_chains()
    try:
        yield n
    finally:
        # A failed test may leave attachments: undo what the cache records, then the rest.
        cached = {p.name.rsplit("-", 2)[1] for p in (n.cache_dir / "results").glob("*-*-*")}
        for sandbox_id in cached:
            with contextlib.suppress(Exception):
                _run(n.client().teardown(sandbox_id, None, PodRef("", "", "")))
        try:
            for path in netns.list_pinned(n.netns_dir):
                netns.remove(path)
            if _link_exists(n.bridge):
                subprocess.run(["ip", "link", "del", n.bridge], check=True)
        finally:
            Path("/proc/sys/net/ipv4/ip_forward").write_text(forward)


def _run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def _links(ns: Path) -> dict[str, dict]:
    out = netns.run_in(
        ns, lambda: subprocess.run(["ip", "-j", "addr"], capture_output=True, text=True, check=True)
    ).stdout
    return {link["ifname"]: link for link in json.loads(out)}


def _http_get(host: str, port: int, sock: socket.socket | None = None) -> str:
    s = sock or socket.create_connection((host, port), timeout=10)
    with s:
        if sock is not None:
            s.settimeout(10)
            s.connect((host, port))
        s.sendall(f"GET /index.html HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data.decode(errors="replace")


def _listening(pid: int, port: int) -> bool:
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[1].endswith(f":{port:04X}") and fields[3] == "0A":  # LISTEN
                return True
    return False


def _wait_listening(pid: int, port: int) -> None:
    """Until the process's netns (its /proc/<pid>/net) lists a TCP listener on `port`."""
    deadline = time.monotonic() + 10
    while not _listening(pid, port):
        assert time.monotonic() < deadline, f"nothing listens on port {port} in the pod"
        time.sleep(0.02)


def _iptables() -> str:
    return subprocess.run(["iptables-save"], capture_output=True, text=True, check=True).stdout


def _cni_chains() -> frozenset[str]:
    """portmap's CNI-DN-<hash> and bridge's CNI-<hash> chains (the shared CNI-HOSTPORT-* stay)."""
    return frozenset(
        line.split()[0][1:]
        for line in _iptables().splitlines()
        if line.startswith(":CNI-") and not line.startswith(":CNI-HOSTPORT-")
    )


def _assert_nothing_left(n: Net, ns: Path, sandbox_id: str) -> None:
    assert str(ns) not in Path("/proc/self/mountinfo").read_text()
    assert not ns.exists()
    assert n.leases() == []
    assert sandbox_id not in _iptables()
    assert _cni_chains() <= n.chains
    assert not list((n.cache_dir / "results").glob(f"*{sandbox_id}*"))


def test_pod_network_end_to_end(net: Net, tmp_path: Path) -> None:
    cni = net.client()
    status = _run(cni.status())
    assert status.ready and status.network == net.name

    ns = netns.create(net.netns_dir)
    assert netns.is_pinned(ns) and str(ns) in Path("/proc/self/mountinfo").read_text()
    sandbox_id = secrets.token_hex(32)
    pod = PodRef(namespace="default", name="web", uid=str(uuid.uuid4()))
    host_port = _free_port()

    result = _run(cni.setup(sandbox_id, ns, pod, [PortMapping(host_port, 80)]))
    ip = IPv4Address(result.ip)
    assert ip in net.subnet and result.additional_ips == ()
    assert net.leases() == [result.ip]

    links = _links(ns)
    assert "UP" in links["eth0"]["flags"] and "UP" in links["lo"]["flags"]
    assert any(a["local"] == result.ip for a in links["eth0"]["addr_info"])
    assert any(a["local"] == "127.0.0.1" for a in links["lo"]["addr_info"])

    www = tmp_path / "www"
    www.mkdir()
    (www / "index.html").write_text("hello from the pod\n")
    server = netns.run_in(
        ns,
        lambda: subprocess.Popen(
            [str(BUSYBOX), "httpd", "-f", "-p", "80", "-h", str(www)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),
    )
    try:
        _wait_listening(server.pid, 80)
        # From the host to the pod IP (through the bridge) ...
        assert "hello from the pod" in _http_get(result.ip, 80)
        # ... to the hostPort on 127.0.0.1 (portmap's DNAT in OUTPUT) ...
        assert "hello from the pod" in _http_get("127.0.0.1", host_port)
        # ... and from a socket made inside the pod, to the pod's own loopback.
        assert "hello from the pod" in _http_get("127.0.0.1", 80, netns.socket_in(ns))
    finally:
        server.kill()
        server.wait()

    # A daemon restart: a new client with no config at all, only the cache.
    restarted = net.client(conf_dir=tmp_path / "no-config")
    assert not _run(restarted.status()).ready
    cached = _run(restarted.pod_network(sandbox_id))
    assert cached is not None and cached.ip == result.ip
    _run(restarted.teardown(sandbox_id, ns, pod))
    assert net.leases() == []
    assert sandbox_id not in _iptables()
    assert _run(restarted.pod_network(sandbox_id)) is None
    # DEL again, with the netns still there and then gone: both fine.
    _run(cni.teardown(sandbox_id, ns, pod))
    netns.remove(ns)
    netns.remove(ns)
    _run(cni.teardown(sandbox_id, ns, pod))
    _assert_nothing_left(net, ns, sandbox_id)


def test_del_after_the_netns_is_gone_frees_everything(net: Net) -> None:
    cni = net.client()
    ns = netns.create(net.netns_dir)
    sandbox_id = secrets.token_hex(32)
    pod = PodRef(namespace="default", name="gone", uid=str(uuid.uuid4()))
    result = _run(cni.setup(sandbox_id, ns, pod, [PortMapping(_free_port(), 8080)]))
    assert net.leases() == [result.ip] and sandbox_id in _iptables()

    netns.remove(ns)  # the namespace went first (a crash, a manual cleanup)
    _run(net.client().teardown(sandbox_id, ns, pod))
    _run(net.client().teardown(sandbox_id, ns, pod))
    _assert_nothing_left(net, ns, sandbox_id)


def test_failed_add_is_unwound(net: Net) -> None:
    net.write([net.bridge_plugin(), {"type": "no-such-plugin-lnrt"}])
    cni = net.client()
    ns = netns.create(net.netns_dir)
    sandbox_id = secrets.token_hex(32)
    pod = PodRef(namespace="default", name="broken", uid=str(uuid.uuid4()))
    with pytest.raises(FailedPrecondition, match="no-such-plugin-lnrt"):
        _run(cni.setup(sandbox_id, ns, pod))
    # bridge's ADD ran and was deleted again: no lease, no eth0 left in the namespace.
    assert net.leases() == []
    assert "eth0" not in _links(ns)
    assert _run(cni.pod_network(sandbox_id)) is None
    netns.remove(ns)
    _assert_nothing_left(net, ns, sandbox_id)


def test_a_plugin_error_carries_the_plugin_message(net: Net) -> None:
    bad = net.bridge_plugin()
    bad["ipam"]["ranges"] = [[{"subnet": "not-a-subnet"}]]
    net.write([bad])
    ns = netns.create(net.netns_dir)
    sandbox_id = secrets.token_hex(32)
    pod = PodRef(namespace="default", name="bad", uid=str(uuid.uuid4()))
    with pytest.raises(Exception, match=r"plugin type='bridge' failed \(ADD\).*not-a-subnet"):
        _run(net.client().setup(sandbox_id, ns, pod))
    netns.remove(ns)
    _assert_nothing_left(net, ns, sandbox_id)


def test_loopback_up_sets_lo_up_in_the_pinned_namespace_alone(tmp_path: Path) -> None:
    host = os.readlink("/proc/thread-self/ns/net")
    ns = netns.create(tmp_path / "netns")
    try:
        lo = _links(ns)["lo"]
        assert "UP" not in lo["flags"] and not lo.get("addr_info")  # a new namespace's lo
        host_lo = _links_of_host()["lo"]["flags"]
        netns.loopback_up(ns)
        netns.loopback_up(ns)  # already up: nothing to do, no error
        lo = _links(ns)["lo"]
        assert "UP" in lo["flags"]
        # The kernel addresses lo as it comes up, as after the loopback plugin's ADD.
        assert {a["local"] for a in lo["addr_info"]} >= {"127.0.0.1"}
        assert _links_of_host()["lo"]["flags"] == host_lo
        # The thread that entered the namespace is gone; this one never left the host's.
        assert os.readlink("/proc/thread-self/ns/net") == host
    finally:
        netns.remove(ns)
    # A namespace that is gone, and a file that is none: the path is named.
    with pytest.raises(NotFound, match=str(ns)):
        netns.loopback_up(ns)
    plain = tmp_path / "plain"
    plain.touch()
    with pytest.raises(NotFound, match="plain is not a network namespace"):
        netns.loopback_up(plain)


def test_loopback_up_failing_is_a_failed_precondition_naming_the_cause(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refused(ifname: str) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(netns, "_set_up", refused)
    ns = netns.create(tmp_path / "netns")
    try:
        with pytest.raises(FailedPrecondition, match=r"set lo up in network namespace .*: Operat"):
            netns.loopback_up(ns)
    finally:
        netns.remove(ns)


def _links_of_host() -> dict[str, dict]:
    out = subprocess.run(["ip", "-j", "addr"], capture_output=True, text=True, check=True).stdout
    return {link["ifname"]: link for link in json.loads(out)}


def test_netns_helpers_leave_the_daemons_threads_in_the_host_namespace(tmp_path: Path) -> None:
    def own() -> str:
        return os.readlink("/proc/thread-self/ns/net")

    host = own()

    async def scenario() -> tuple[str, str, str, str]:
        ns = await asyncio.to_thread(netns.create, tmp_path / "netns")
        inside = await netns.arun_in(ns, own)
        sock = await netns.asocket_in(ns)
        sock.close()
        pool = await asyncio.to_thread(own)  # a worker thread that may have run the helpers
        await asyncio.to_thread(netns.remove, ns)
        return inside, own(), pool, str(ns)

    inside, loop_thread, pool_thread, ns = asyncio.run(scenario())
    assert inside != host and loop_thread == host and pool_thread == host
    assert not netns.is_pinned(Path(ns)) and ns not in Path("/proc/self/mountinfo").read_text()

    plain = tmp_path / "plain"
    plain.touch()
    with pytest.raises(NotFound, match="not a network namespace"):
        netns.run_in(plain, own)
    netns.remove(plain)  # never pinned: just unlinked
    netns.remove(plain)
    assert not plain.exists()
    with pytest.raises(NotFound, match="does not exist"):
        netns.run_in(plain, own)
