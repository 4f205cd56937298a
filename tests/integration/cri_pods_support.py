"""In-process CRI pods: a Core in a temporary root, the `sandboxes` and `containers` handler
groups over it, a private CNI network (bridge + host-local + portmap, own conf dir, subnet,
host-local store and result cache) and test images from the session's registry:

    <reg>/cri-pods/pause:3.9     busybox, entrypoint `sleep 2147483647` (the sandbox image)
    <reg>/cri-pods/busybox:1.0   busybox, cmd `/bin/sh`

Handlers are called with request messages, as the servicers will. `leftovers` lists what a
pod may leak (netns mounts, shm mounts, host-local leases, iptables rules, conmons,
cgroups), for the tests to assert it is empty.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from ipaddress import IPv4Network
from pathlib import Path

import pytest
from cri_support import free_subnet
from imagebuild import (
    OCILayout,
    build_config,
    build_layer,
    build_manifest,
    busybox_layer_entries,
    symlink,
)
from registry import Registry

from liner_api.runtime.v1 import api_pb2 as cri
from linerd import faults
from linerd.assembly import Core, build_core
from linerd.config import Config
from linerd.cri import meta
from linerd.cri.cni import CNI, DEFAULT_BIN_DIRS
from linerd.cri.containers import Containers
from linerd.cri.sandboxes import Sandboxes
from linerd.metrics import Metrics
from linerd.remotes.hosts import HostsConfig

PLUGINS = ("bridge", "host-local", "portmap", "loopback")
EXTRA_APPLETS = ("httpd", "dd", "head", "printf", "pgrep", "cut", "seq", "nc", "wget")


def missing() -> str:
    if os.geteuid() != 0:
        return "needs root (network namespaces, mounts, runc)"
    for plugin in PLUGINS:
        if not any(os.access(Path(d) / plugin, os.X_OK) for d in DEFAULT_BIN_DIRS):
            return f"CNI plugin {plugin} not found (containernetworking-plugins)"
    for tool in ("iptables-save", "ip", "runc", "conmon"):
        if shutil.which(tool) is None:
            return f"{tool} not found"
    return ""


@dataclass(frozen=True)
class Images:
    pause: str
    busybox: str


def push_images(reg: Registry, workdir: Path) -> Images:
    entries = busybox_layer_entries()
    entries += [symlink(f"bin/{a}", "busybox") for a in EXTRA_APPLETS]
    layer = build_layer(entries, "gzip", "oci")
    refs = []
    for name, kwargs in (
        ("pause:3.9", {"entrypoint": ["/bin/sleep", "2147483647"]}),
        ("busybox:1.0", {"cmd": ["/bin/sh"]}),
    ):
        layout_dir = workdir / name.replace(":", "-")
        config = build_config([layer.diff_id], **kwargs)  # type: ignore[arg-type]
        manifest = build_manifest(config, [layer])
        layout = OCILayout(layout_dir)
        layout.add(config, layer.blob, manifest)
        tag = name.split(":")[1]
        layout.tag(manifest, tag)
        refs.append(reg.push_layout(layout_dir, f"cri-pods/{name}", tag=tag))
    return Images(pause=refs[0], busybox=refs[1])


@dataclass
class Net:
    name: str
    bridge: str
    subnet: IPv4Network
    conf_dir: Path
    cache_dir: Path
    ipam_dir: Path
    ip_forward: str = ""  # the host's value, given back at the end (isGateway turns it on)

    def leases(self) -> list[str]:
        d = self.ipam_dir / self.name
        if not d.exists():
            return []
        return sorted(p.name for p in d.iterdir() if p.name[0].isdigit())


@pytest.fixture(scope="session")
def cri_images(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Images:
    """The CRI tests' images, pushed once per session (a fixture of every module: conftest)."""
    return push_images(registry, tmp_path_factory.mktemp("cri-images"))


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Net]:
    """A CNI network of the test's own, its bridge removed afterwards."""
    n = make_net(tmp_path / "net")
    try:
        yield n
    finally:
        drop_net(n)


def make_net(base: Path) -> Net:
    tag = secrets.token_hex(3)
    n = Net(
        name=f"lnrp-{tag}",
        bridge=f"lnrp{tag}",
        subnet=free_subnet(),
        conf_dir=base / "net.d",
        cache_dir=base / "cni-cache",
        ipam_dir=base / "ipam",
        ip_forward=Path("/proc/sys/net/ipv4/ip_forward").read_text().strip(),
    )
    n.conf_dir.mkdir(parents=True)
    conf = {
        "cniVersion": "1.0.0",
        "name": n.name,
        "plugins": [
            {
                "type": "bridge",
                "bridge": n.bridge,
                "isGateway": True,
                "ipMasq": False,  # pods never leave the host here
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "dataDir": str(n.ipam_dir),
                    "ranges": [[{"subnet": str(n.subnet)}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }
    (n.conf_dir / "10-liner.conflist").write_text(json.dumps(conf))
    return n


def drop_net(n: Net) -> None:
    if subprocess.run(["ip", "link", "show", n.bridge], capture_output=True).returncode == 0:
        subprocess.run(["ip", "link", "del", n.bridge], check=False)
    if n.ip_forward:
        Path("/proc/sys/net/ipv4/ip_forward").write_text(n.ip_forward)


@dataclass
class Pods:
    core: Core
    sandboxes: Sandboxes
    containers: Containers
    net: Net
    images: Images
    base: Path

    def sandbox_config(
        self,
        name: str = "",
        *,
        hostname: str = "",
        network: int = cri.POD,
        pid: int = cri.POD,
        ipc: int = cri.POD,
        port_mappings: list[cri.PortMapping] | None = None,
        dns: cri.DNSConfig | None = None,
        labels: dict[str, str] | None = None,
    ) -> cri.PodSandboxConfig:
        name = name or f"pod-{secrets.token_hex(3)}"
        log_dir = self.base / "logs" / name
        config = cri.PodSandboxConfig(
            metadata=cri.PodSandboxMetadata(
                name=name, namespace="default", uid=str(uuid.uuid4()), attempt=0
            ),
            hostname=hostname if network != cri.NODE else "",
            log_directory=str(log_dir),
            port_mappings=port_mappings or [],
            labels=labels or {"app": name},
            annotations={"note": "a b c"},
            linux=cri.LinuxPodSandboxConfig(
                security_context=cri.LinuxSandboxSecurityContext(
                    namespace_options=cri.NamespaceOption(network=network, pid=pid, ipc=ipc)
                )
            ),
        )
        if dns is not None:
            config.dns_config.CopyFrom(dns)
        return config

    async def run_pod(self, config: cri.PodSandboxConfig) -> str:
        resp = await self.sandboxes.run_pod_sandbox(cri.RunPodSandboxRequest(config=config))
        return resp.pod_sandbox_id

    def container_config(
        self, name: str, args: list[str], *, command: list[str] | None = None, **kw: object
    ) -> cri.ContainerConfig:
        return cri.ContainerConfig(
            metadata=cri.ContainerMetadata(name=name),
            image=cri.ImageSpec(image=self.images.busybox),
            command=command if command is not None else ["/bin/sh"],
            args=args,
            log_path=f"{name}/0.log",
            labels={"c": name},
            **kw,  # type: ignore[arg-type]
        )

    async def create(
        self, pod: str, pod_config: cri.PodSandboxConfig, config: cri.ContainerConfig
    ) -> str:
        # kubelet gives a container its pod's pid mode unless it asks for another.
        own = config.linux.security_context.namespace_options
        pod_pid = pod_config.linux.security_context.namespace_options.pid
        if own.pid == cri.POD and pod_pid != cri.POD:
            own.pid = pod_pid
        resp = await self.containers.create_container(
            cri.CreateContainerRequest(pod_sandbox_id=pod, config=config, sandbox_config=pod_config)
        )
        return resp.container_id

    async def status(self, container_id: str) -> cri.ContainerStatus:
        resp = await self.containers.container_status(
            cri.ContainerStatusRequest(container_id=container_id)
        )
        return resp.status

    async def wait_exited(self, container_id: str) -> cri.ContainerStatus:
        """Until the container's exit is recorded: the task's own wait, then a status."""
        with contextlib.suppress(Exception):
            await self.core.local.tasks.wait(meta.NAMESPACE, container_id)
        return await self.status(container_id)

    async def sandbox_status(self, pod: str) -> cri.PodSandboxStatus:
        resp = await self.sandboxes.pod_sandbox_status(
            cri.PodSandboxStatusRequest(pod_sandbox_id=pod)
        )
        return resp.status

    async def exec(self, container_id: str, *cmd: str, timeout: int = 0) -> cri.ExecSyncResponse:
        return await self.containers.exec_sync(
            cri.ExecSyncRequest(container_id=container_id, cmd=list(cmd), timeout=timeout)
        )

    async def remove_all(self) -> None:
        listed = await self.sandboxes.list_pod_sandbox(cri.ListPodSandboxRequest())
        for item in listed.items:
            await self.sandboxes.stop_pod_sandbox(cri.StopPodSandboxRequest(pod_sandbox_id=item.id))
            await self.sandboxes.remove_pod_sandbox(
                cri.RemovePodSandboxRequest(pod_sandbox_id=item.id)
            )


def build(
    core: Core, net: Net, images: Images, *, drop_infra_ctr: bool = True
) -> tuple[Sandboxes, Containers]:
    cni = CNI(conf_dir=net.conf_dir, cache_dir=net.cache_dir)
    containers = Containers(core)

    async def pull(ref: str) -> object:
        return await core.local.transfer.pull(meta.NAMESPACE, ref, plain_http=True)

    sandboxes = Sandboxes(
        core,
        containers,
        cni=cni,
        sandbox_image=images.pause,
        pull=pull,
        drop_infra_ctr=drop_infra_ctr,
    )
    return sandboxes, containers


async def open_core(base: Path) -> Core:
    config = Config(root=str(base / "root"), state=str(base / "state"))
    for directory in (config.root, config.state):
        Path(directory).mkdir(parents=True, exist_ok=True)
    hosts = HostsConfig.from_dict({})
    core = await asyncio.to_thread(build_core, config, lambda: hosts, Metrics())
    await core.runtime.recover_all()
    return core


async def close_core(core: Core) -> None:
    await core.runtime.close()
    core.db.close()


@asynccontextmanager
async def pods(
    base: Path, net: Net, images: Images, *, drop_infra_ctr: bool = True
) -> AsyncIterator[Pods]:
    core = await open_core(base)
    sandboxes, containers = build(core, net, images, drop_infra_ctr=drop_infra_ctr)
    await core.local.transfer.pull(meta.NAMESPACE, images.busybox, plain_http=True)
    p = Pods(core, sandboxes, containers, net, images, base)
    try:
        yield p
    finally:
        try:
            await p.remove_all()
        finally:
            await close_core(core)


def mountinfo() -> str:
    return Path("/proc/self/mountinfo").read_text()


def iptables() -> str:
    return subprocess.run(["iptables-save"], capture_output=True, text=True, check=True).stdout


def conmons_under(state: Path) -> list[int]:
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmdline = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmdline and cmdline[0].endswith(b"conmon") and str(state).encode() in b" ".join(cmdline):
            found.append(int(d.name))
    return found


def cgroup_exists(container_id: str) -> bool:
    for root in (Path("/sys/fs/cgroup/pids"), Path("/sys/fs/cgroup")):
        if (root / meta.NAMESPACE / container_id).exists():
            return True
    return False


def leftovers(p: Pods, ids: list[str]) -> list[str]:
    """What pods `ids` left behind: [] when nothing."""
    found = []
    info = mountinfo()
    state = p.core.state
    if f"{state}/cri/netns" in info:
        found.append("pod namespace mount (net, ipc or uts)")
    if f"{state}/cri/sandboxes" in info:
        found.append("shm mount")
    if p.net.leases():
        found.append(f"host-local leases {p.net.leases()}")
    rules = iptables()
    for i in ids:
        if i in rules:
            found.append(f"iptables rule for {i}")
        if cgroup_exists(i):
            found.append(f"cgroup of {i}")
    if conmons_under(state):
        found.append("conmon")
    return found


# -- a second process, for crash points (a SIGKILL there must not take the tests with it) --


def child_main(base: str, net_json: str, images_json: str, what: str, pid: str = "0") -> None:
    """Run a pod (and with `what` == "container", create a container in it; with "second",
    two, the crash point armed only for the second: the image's next containers take
    another path) in this process; print the ids. LINERD_CRASH_AT in the environment kills
    the process at that point."""
    doc = json.loads(net_json)
    net = Net(
        name=doc["name"],
        bridge=doc["bridge"],
        subnet=IPv4Network(doc["subnet"]),
        conf_dir=Path(doc["conf_dir"]),
        cache_dir=Path(doc["cache_dir"]),
        ipam_dir=Path(doc["ipam_dir"]),
    )
    images = Images(**json.loads(images_json))

    async def main() -> None:
        crash_at = faults._AT
        if what == "second":
            faults._AT = ""  # armed for the second container only (not the pull's unpack)
        core = await open_core(Path(base))
        sandboxes, containers = build(core, net, images)
        await core.local.transfer.pull(meta.NAMESPACE, images.busybox, plain_http=True)
        p = Pods(core, sandboxes, containers, net, images, Path(base))
        config = p.sandbox_config("crashing", pid=int(pid))
        pod = await p.run_pod(config)
        ids = [pod]
        if what == "second":
            cid = await p.create(pod, config, p.container_config("c1", ["-c", "sleep 1000"]))
            ids.append(cid)
            faults._AT = crash_at
        if what in ("container", "second"):
            cid = await p.create(pod, config, p.container_config("c", ["-c", "sleep 1000"]))
            ids.append(cid)
        print(json.dumps(ids), flush=True)
        await close_core(core)

    asyncio.run(main())


def run_child(
    base: Path, net: Net, images: Images, what: str, crash_at: str, pid: int = cri.POD
) -> subprocess.CompletedProcess[str]:
    import sys

    here = Path(__file__).resolve().parent
    net_json = json.dumps({k: str(v) for k, v in net.__dict__.items() if k != "ip_forward"})
    code = (
        "import sys; import cri_pods_support as s; "
        "s.child_main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5])"
    )
    env = {
        **os.environ,
        "LINERD_CRASH_AT": crash_at,
        "PYTHONPATH": os.pathsep.join(
            [str(here), str(here.parent), os.environ.get("PYTHONPATH", "")]
        ),
    }
    return subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            str(base),
            net_json,
            json.dumps(images.__dict__),
            what,
            str(pid),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
