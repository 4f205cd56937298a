"""The CRI test harness: linerd and Debian's containerd behind the same runtime.v1 calls.

Fixtures (imported by tests/integration/conftest.py):

- ``pause_image``: the session's sandbox image, built here from busybox-static (``/pause`` is
  a shell that exits 0 on SIGTERM/SIGINT and reaps what it inherits), pushed to the session's
  open test registry as ``<registry>/liner-test/pause:3.9``.
- ``cri``: a daemon serving the CRI, parametrized over ``liner`` and ``containerd`` (the
  latter marked ``reference``: `make test-reference` runs it, `make test` leaves it out).
  One per test module. Each gets a private root, state and socket, a private CNI network
  (conf dir holding a bridge + host-local + portmap conflist, its own bridge ``lnrc<hex>``,
  a free 10.89.<n>.0/24 subnet, host-local data dir), ``sandbox_image`` = ``pause_image``,
  and the test registry as a plain-HTTP registry. It yields a `CriDaemon`: ``runtime`` and
  ``images`` stubs over the socket, ``crictl(...)`` and ``ctr(...)`` command lines for it.
  At the end every pod left is stopped and removed through the CRI; then the leak check
  (`leaks`) must find nothing the daemon's pods left behind, or the module's last test
  errors in teardown; then the daemon is stopped and the bridge deleted.

The leak check looks, for the pods and containers the module made (the ids RunPodSandbox and
CreateContainer answered over the fixture's channel or `crictl`), at: network namespace
mounts (and any mount naming an id) under the daemon's directories, host-local leases in the
network's store, iptables rules naming the network or an id (portmap's CNI-HOSTPORT-* jumps
and CNI-DN-* chains carry both in their comments), monitors (conmon, containerd's shims)
naming the daemon's directories, and the ids' cgroups (`/k8s.io/<id>`).

containerd runs as bench/bench.py's ContainerdDaemon does: in a private mount namespace with
a tmpfs on /run/containerd (its shims' sockets are there whatever the config says), and here
also on /var/lib/cni (libcni's result cache, which 1.6 cannot move) and with pod netns files
under its state dir (``netns_mounts_under_state_dir``), so it touches nothing of the host's.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

import grpc
import pytest
from imagebuild import (
    OCILayout,
    build_config,
    build_layer,
    build_manifest,
    busybox_layer_entries,
    file,
)
from registry import Registry, free_port
from support import REPO, Linerd

from liner_api.runtime.v1 import api_pb2, api_pb2_grpc

CNI_BIN_DIR = "/usr/lib/cni"
CNI_PLUGINS = ("bridge", "host-local", "portmap", "loopback")
PAUSE_REPO = "liner-test/pause"
PAUSE_TAG = "3.9"
LINER = "liner"
CONTAINERD = "containerd"
# A registry name that exists only in the daemons' registry configuration: a mirror on the
# test registry serves it (CRI pulls go through the hosts configuration every pull uses).
MIRRORED_HOST = "registry.liner.test"

# PID 1 of every sandbox: waits forever, exits 0 on SIGTERM/SIGINT; `wait` reaps children,
# including processes of the pod's containers it inherits in a shared pid namespace.
PAUSE_SCRIPT = """#!/bin/sh
trap 'exit 0' TERM INT
while :; do
  sleep 2147483647 &
  wait $!
done
"""


def find_crictl() -> str | None:
    """crictl on PATH, or at ../shared/bin/crictl beside the checkout (or the worktree)."""
    found = shutil.which("crictl")
    if found:
        return found
    for base in (REPO.parent, REPO.parent.parent):
        candidate = base / "shared" / "bin" / "crictl"
        if os.access(candidate, os.X_OK):
            return str(candidate)
    return None


CRICTL = find_crictl()
needs_crictl = pytest.mark.skipif(
    CRICTL is None, reason="crictl not on PATH nor at ../shared/bin/crictl"
)


def missing_for_pods() -> str:
    """Why pods cannot run here ("" if they can)."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, bridges, iptables, runc)"
    for plugin in CNI_PLUGINS:
        if not os.access(Path(CNI_BIN_DIR) / plugin, os.X_OK):
            return f"CNI plugin {plugin} not in {CNI_BIN_DIR} (containernetworking-plugins)"
    if shutil.which("iptables") is None:
        return "iptables not found (portmap needs it)"
    return ""


def missing_containerd() -> str:
    if shutil.which("containerd") is None or shutil.which("containerd-shim-runc-v2") is None:
        return "Debian's containerd (with containerd-shim-runc-v2) is not installed"
    return missing_for_pods()


# ---- images ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PushedImage:
    """An image in the test registry: its repository (`host/repo`), tags and digests."""

    repository: str
    tags: tuple[str, ...]
    digest: str  # the manifest's: what each tag resolves to
    id: str  # the config's digest: the CRI's image id

    def ref(self, tag: str | None = None) -> str:
        return f"{self.repository}:{tag or self.tags[0]}"

    @property
    def by_digest(self) -> str:
        return f"{self.repository}@{self.digest}"


@functools.cache
def _busybox_layer() -> Any:
    return build_layer(busybox_layer_entries())


def push_busybox_image(
    reg: Registry,
    workdir: Path,
    repo: str,
    tags: tuple[str, ...] = ("latest",),
    *,
    user: str = "",
    entrypoint: list[str] | None = None,
    cmd: list[str] | None = None,
    extra: list[Any] | None = None,
) -> PushedImage:
    """Push a busybox image as `repo:<tag>` for each of `tags`. Its config names `repo`, so
    images pushed to different repositories have different ids; `extra` entries make a
    second layer."""
    layers = [_busybox_layer()]
    if extra:
        layers.append(build_layer(extra))
    config = build_config(
        [layer.diff_id for layer in layers],
        user=user,
        entrypoint=entrypoint,
        cmd=cmd if cmd is not None else ["/bin/sh"],
        working_dir="/",
        labels={"org.liner.test.repository": repo},
    )
    manifest = build_manifest(config, layers)
    layout_dir = workdir / f"layout-{secrets.token_hex(4)}"
    layout = OCILayout(layout_dir)
    layout.add(config, *layers, manifest)
    layout.tag(manifest, "image")
    for tag in tags:
        reg.push_layout(layout_dir, f"{repo}:{tag}", tag="image")
    shutil.rmtree(layout_dir, ignore_errors=True)
    return PushedImage(reg.ref(repo), tuple(tags), manifest.digest, config.digest)


def push_pause_image(reg: Registry, workdir: Path) -> str:
    """Push the pause image (busybox + PAUSE_SCRIPT as /pause); its reference."""
    pushed = push_busybox_image(
        reg,
        workdir,
        PAUSE_REPO,
        (PAUSE_TAG,),
        entrypoint=["/pause"],
        cmd=[],
        extra=[file("pause", PAUSE_SCRIPT, 0o755)],
    )
    return pushed.ref()


@pytest.fixture(scope="session")
def pause_image(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> str:
    """`<registry>/liner-test/pause:3.9`: the sandbox image of every CRI test."""
    return push_pause_image(registry, tmp_path_factory.mktemp("pause"))


# ---- the pod network -------------------------------------------------------------------------


@dataclass
class PodNetwork:
    """A private CNI network: its conf dir holds one conflist naming its own bridge."""

    name: str
    bridge: str
    subnet: IPv4Network
    conf_dir: Path
    ipam_dir: Path

    @property
    def conflist(self) -> Path:
        return self.conf_dir / "10-liner-test.conflist"

    def write(self) -> None:
        self.conf_dir.mkdir(parents=True, exist_ok=True)
        conf = {
            "cniVersion": "1.0.0",
            "name": self.name,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": self.bridge,
                    "isGateway": True,
                    # Pods here never leave the host: keep the host's NAT table out of it
                    # (bridge 1.1.1's masquerading also needs the netns alive at DEL).
                    "ipMasq": False,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "dataDir": str(self.ipam_dir),
                        "ranges": [[{"subnet": str(self.subnet)}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        }
        self.conflist.write_text(json.dumps(conf, indent=2))

    def remove(self) -> None:
        if subprocess.run(["ip", "link", "show", self.bridge], capture_output=True).returncode == 0:
            subprocess.run(["ip", "link", "del", self.bridge], check=False)


def free_subnet() -> IPv4Network:
    """A /24 of 10.89.0.0/16 that no route of this machine uses (a test's bridge)."""
    used = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True).stdout
    while True:
        third = secrets.randbelow(250) + 3
        if f"10.89.{third}." not in used:
            return IPv4Network(f"10.89.{third}.0/24")


def new_pod_network(base: Path) -> PodNetwork:
    tag = secrets.token_hex(3)
    net = PodNetwork(
        name=f"lnrc-{tag}",
        bridge=f"lnrc{tag}",
        subnet=free_subnet(),
        conf_dir=base / "net.d",
        ipam_dir=base / "ipam",
    )
    net.write()
    return net


# ---- daemons ---------------------------------------------------------------------------------


@dataclass
class CriDaemon:
    """A daemon serving runtime.v1 on `socket`, as the tests see it."""

    kind: str  # LINER or CONTAINERD
    socket: str
    base: Path
    network: PodNetwork
    sandbox_image: str
    metrics_address: str = ""  # liner's, where its metrics are served
    # The pid whose mount namespace the daemon's containers see (None: this process's):
    # containerd runs in a private one here, so a test's host mounts must be made there.
    mount_pid: int | None = None
    pid: int = 0  # the daemon's own (the bench samples its memory)
    # Every pod and container id the daemon answered (RunPodSandbox, CreateContainer).
    created: set[str] = field(default_factory=set, repr=False)
    channel: grpc.Channel = field(init=False, repr=False)
    runtime: api_pb2_grpc.RuntimeServiceStub = field(init=False, repr=False)
    images: api_pb2_grpc.ImageServiceStub = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.channel = grpc.intercept_channel(
            grpc.insecure_channel(
                f"unix://{self.socket}",
                options=[("grpc.max_receive_message_length", 16 << 20)],
            ),
            _IdRecorder(self.created),
        )
        self.runtime = api_pb2_grpc.RuntimeServiceStub(self.channel)
        self.images = api_pb2_grpc.ImageServiceStub(self.channel)
        crictl_config = self.base / "crictl.yaml"
        crictl_config.write_text(
            f"runtime-endpoint: {self.endpoint}\nimage-endpoint: {self.endpoint}\ntimeout: 120\n"
        )

    @property
    def endpoint(self) -> str:
        return f"unix://{self.socket}"

    @property
    def is_liner(self) -> bool:
        return self.kind == LINER

    def crictl_argv(self, *args: str) -> list[str]:
        assert CRICTL is not None, "use needs_crictl"
        return [CRICTL, "--config", str(self.base / "crictl.yaml"), *args]

    def crictl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            self.crictl_argv(*args), capture_output=True, text=True, timeout=180, env=_env()
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"crictl {' '.join(args)} failed: {proc.stderr}{proc.stdout}")
        if proc.returncode == 0 and args and args[0] in ("runp", "create", "run"):
            self.created.add(proc.stdout.strip())
        return proc

    def host_sh(self, script: str) -> None:
        """Run `script` on the host, in the mount namespace the daemon's containers see."""
        enter = ["nsenter", "-t", str(self.mount_pid), "-m"] if self.mount_pid else []
        subprocess.run([*enter, "sh", "-ec", script], check=True, capture_output=True)

    def ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """ctr against the daemon's containerd API, in namespace k8s.io."""
        proc = subprocess.run(
            ["ctr", "--address", self.socket, "--namespace", "k8s.io", *args],
            capture_output=True,
            text=True,
            timeout=180,
            env=_env(),
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"ctr {' '.join(args)} failed: {proc.stderr}{proc.stdout}")
        return proc

    def remove_all_pods(self) -> None:
        """Stop and remove every pod through the CRI (where the daemon serves pods)."""
        try:
            pods = self.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest(), timeout=60).items
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.UNIMPLEMENTED:
                return
            raise
        for pod in pods:
            self.runtime.StopPodSandbox(
                api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod.id), timeout=120
            )
            self.runtime.RemovePodSandbox(
                api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod.id), timeout=120
            )

    def close(self) -> None:
        self.channel.close()


class _IdRecorder(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Records the ids RunPodSandbox and CreateContainer answer: what the leak check seeks."""

    def __init__(self, ids: set[str]) -> None:
        self.ids = ids

    def intercept_unary_unary(self, continuation, client_call_details, request):  # type: ignore[no-untyped-def]
        outcome = continuation(client_call_details, request)
        if client_call_details.method.endswith(("/RunPodSandbox", "/CreateContainer")):
            with contextlib.suppress(grpc.RpcError):
                response = outcome.result()
                self.ids.add(
                    getattr(response, "pod_sandbox_id", "") or getattr(response, "container_id", "")
                )
        return outcome


# ---- the leak check --------------------------------------------------------------------------


def _mounts(pid: int | None) -> list[tuple[str, str]]:
    """(mount point, fs type) of each mount in `pid`'s mount namespace (None: ours)."""
    text = Path(f"/proc/{pid or 'self'}/mountinfo").read_text()
    out = []
    for line in text.splitlines():
        fields, _, rest = line.partition(" - ")
        out.append((fields.split()[4], rest.split()[0]))
    return out


def _monitors(base: Path) -> list[str]:
    """conmons and containerd shims whose command line names `base`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            name = os.path.basename(argv[0])
            if (name == b"conmon" or name.startswith(b"containerd-shim")) and str(
                base
            ).encode() in b" ".join(argv):
                found.append(f"{name.decode()} (pid {entry.name})")
    return found


def _cgroups(ids: set[str]) -> list[str]:
    root = Path("/sys/fs/cgroup")
    found = []
    for i in ids:
        for candidate in (root / "k8s.io" / i, *root.glob(f"*/k8s.io/{i}")):
            if candidate.exists():
                found.append(str(candidate))
    return found


def leaks(daemon: CriDaemon) -> list[str]:
    """What the daemon's pods left behind: [] when nothing (see the module docstring)."""
    found = []
    base = str(daemon.base)
    ids = {i for i in daemon.created if i}
    for mountpoint, fstype in _mounts(daemon.mount_pid):
        if mountpoint.startswith(base + "/") and (
            fstype == "nsfs" or any(i in mountpoint for i in ids)
        ):
            found.append(f"mount {mountpoint} ({fstype})")
    store = daemon.network.ipam_dir / daemon.network.name
    if store.is_dir():
        found += [f"host-local lease {p.name}" for p in store.iterdir() if p.name[0].isdigit()]
    rules = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
    for line in rules.splitlines():
        if daemon.network.name in line or any(i in line for i in ids):
            found.append(f"iptables: {line}")
    found += _monitors(daemon.base)
    found += [f"cgroup {c}" for c in _cgroups(ids)]
    return found


def assert_no_leaks(daemon: CriDaemon, timeout: float = 30.0) -> None:
    """Until nothing is left (monitors exit after their last container went), or fail."""
    deadline = time.monotonic() + timeout
    while found := leaks(daemon):
        if time.monotonic() > deadline:
            raise AssertionError(f"the {daemon.kind} CRI tests leaked: " + "; ".join(found))
        time.sleep(0.2)


def _env() -> dict[str, str]:
    # No stray CONTAINERD_* or CRI_CONFIG_FILE from the caller's environment.
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("CONTAINERD_") and k != "CRI_CONFIG_FILE"
    }


def _toml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def liner_config(net: PodNetwork, sandbox_image: str, registry_host: str) -> str:
    mirror = f"http://{registry_host}"
    return "\n".join(
        [
            "[cri]",
            f"sandbox_image = {_toml_str(sandbox_image)}",
            "[cri.cni]",
            f"bin_dirs = [{_toml_str(CNI_BIN_DIR)}]",
            f"conf_dir = {_toml_str(str(net.conf_dir))}",
            f"[registry.hosts.{_toml_str(registry_host)}]",
            "plain_http = true",
            f"[registry.hosts.{_toml_str(MIRRORED_HOST)}.host.{_toml_str(mirror)}]",
            'capabilities = ["pull", "resolve"]',
            "",
        ]
    )


@contextlib.contextmanager
def liner_cri(
    base: Path, sandbox_image: str, registry_host: str, log_level: str = "debug"
) -> Iterator[CriDaemon]:
    net = new_pod_network(base)
    config = base / "linerd.toml"
    config.write_text(liner_config(net, sandbox_image, registry_host))
    metrics = f"127.0.0.1:{free_port()}"
    daemon = Linerd(
        base / "linerd",
        extra_args=["--config", str(config), "--metrics-address", metrics],
        log_level=log_level,
    )
    daemon.start()
    assert daemon.proc is not None
    cri = CriDaemon(LINER, daemon.address, base, net, sandbox_image, metrics, pid=daemon.proc.pid)
    try:
        yield cri
        cri.remove_all_pods()
        assert_no_leaks(cri)
    finally:
        try:
            cri.remove_all_pods()
        finally:
            cri.close()
            daemon.stop()
            net.remove()


def containerd_config(base: Path, net: PodNetwork, sandbox_image: str, registry_host: str) -> str:
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    return "\n".join(
        [
            "version = 2",
            f"root = {_toml_str(str(base / 'root'))}",
            f"state = {_toml_str(str(base / 'state'))}",
            "[grpc]",
            f"  address = {_toml_str(str(base / 'containerd.sock'))}",
            "[ttrpc]",
            f"  address = {_toml_str(str(base / 'containerd.sock.ttrpc'))}",
            "[debug]",
            f"  address = {_toml_str(str(base / 'debug.sock'))}",
            '[plugins."io.containerd.internal.v1.opt"]',
            f"  path = {_toml_str(str(base / 'opt'))}",
            f"[{cri}]",
            f"  sandbox_image = {_toml_str(sandbox_image)}",
            "  netns_mounts_under_state_dir = true",
            '  stream_server_address = "127.0.0.1"',
            '  stream_server_port = "0"',
            "  disable_apparmor = true",
            # linerd's rule too: this machine may lack CAP_SYS_RESOURCE (no score below ours).
            "  restrict_oom_score_adj = true",
            "  enable_selinux = false",
            f"[{cri}.containerd]",
            '  snapshotter = "overlayfs"',
            '  default_runtime_name = "runc"',
            f"[{cri}.containerd.runtimes.runc]",
            '  runtime_type = "io.containerd.runc.v2"',
            f"[{cri}.cni]",
            f"  bin_dir = {_toml_str(CNI_BIN_DIR)}",
            f"  conf_dir = {_toml_str(str(net.conf_dir))}",
            f"[{cri}.registry.mirrors.{_toml_str(registry_host)}]",
            f"  endpoint = [{_toml_str('http://' + registry_host)}]",
            f"[{cri}.registry.mirrors.{_toml_str(MIRRORED_HOST)}]",
            f"  endpoint = [{_toml_str('http://' + registry_host)}]",
            "",
        ]
    )


class ContainerdCri:
    """Debian's containerd with its CRI plugin, private as bench/bench.py's ContainerdDaemon."""

    def __init__(self, base: Path, net: PodNetwork, sandbox_image: str, registry_host: str):
        self.base = base
        base.mkdir(parents=True, exist_ok=True)
        self.socket = str(base / "containerd.sock")
        config = base / "containerd.toml"
        config.write_text(containerd_config(base, net, sandbox_image, registry_host))
        for mountpoint in ("/run/containerd", "/var/lib/cni"):
            Path(mountpoint).mkdir(parents=True, exist_ok=True)
        self.log_path = base / "containerd.log"
        script = (
            "mount -t tmpfs tmpfs /run/containerd && mount -t tmpfs tmpfs /var/lib/cni"
            ' && exec containerd --config "$0"'
        )
        with open(self.log_path, "wb") as out:
            # unshare execs sh, which execs containerd: Popen's pid is containerd's.
            self.proc = subprocess.Popen(
                ["unshare", "-m", "--propagation", "private", "sh", "-c", script, str(config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=_env(),
            )
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"containerd exited:\n{self.log()}")
            if os.path.exists(self.socket):
                with grpc.insecure_channel(f"unix://{self.socket}") as ch:
                    try:
                        api_pb2_grpc.RuntimeServiceStub(ch).Version(
                            api_pb2.VersionRequest(), timeout=2
                        )
                        return
                    except grpc.RpcError:
                        pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"containerd's CRI did not start:\n{self.log()}")
            time.sleep(0.1)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def shims(self) -> list[int]:
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                argv = (entry / "cmdline").read_bytes().split(b"\0")
                if (
                    os.path.basename(argv[0]).startswith(b"containerd-shim")
                    and self.socket.encode() in argv
                ):
                    pids.append(int(entry.name))
        return pids

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pid in self.shims():  # shims of pods a failed test left behind
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def containerd_cri(base: Path, sandbox_image: str, registry_host: str) -> Iterator[CriDaemon]:
    net = new_pod_network(base)
    daemon = ContainerdCri(base / "containerd", net, sandbox_image, registry_host)
    cri = CriDaemon(
        CONTAINERD,
        daemon.socket,
        base,
        net,
        sandbox_image,
        mount_pid=daemon.proc.pid,
        pid=daemon.proc.pid,
    )
    try:
        yield cri
        cri.remove_all_pods()
        assert_no_leaks(cri)
    finally:
        try:
            cri.remove_all_pods()
        finally:
            cri.close()
            daemon.stop()
            net.remove()


@contextlib.contextmanager
def ip_forward_kept() -> Iterator[None]:
    """bridge's isGateway turns IPv4 forwarding on; give the host its value back."""
    path = Path("/proc/sys/net/ipv4/ip_forward")
    before = path.read_text().strip()
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            path.write_text(before)


@pytest.fixture(
    scope="module",
    params=[LINER, pytest.param(CONTAINERD, marks=pytest.mark.reference)],
)
def cri(
    request: pytest.FixtureRequest,
    pause_image: str,
    registry: Registry,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[CriDaemon]:
    """A CRI daemon (liner, or containerd as the reference) for one test module."""
    if request.param == CONTAINERD and (why := missing_containerd()):
        pytest.skip(why)
    base = tmp_path_factory.mktemp(f"cri-{request.param}")
    start = liner_cri if request.param == LINER else containerd_cri
    with ip_forward_kept(), start(base, pause_image, registry.host) as daemon:
        yield daemon
