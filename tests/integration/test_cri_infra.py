"""Pods with and without a pause process (CRI-O's `drop_infra_ctr`, `[cri] drop_infra_ctr`),
in process on real runc, conmon, overlay and CNI (cri_pods_support.py).

A pod's net, IPC and UTS namespaces are pinned at files either way; its containers join them
by path. Each test that proves the sharing runs twice: `no-pause` (drop_infra_ctr on, the
pod's pid option CONTAINER, as kubelet sends without shareProcessNamespace) and `pause`
(drop_infra_ctr off: a pause joins the pinned namespaces). A shared pid namespace keeps the
pause with drop_infra_ctr on.

containerd differences: containerd always runs a pause; these tests run on liner only.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import Awaitable, Callable
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from cri_pods_support import (
    Images,
    Net,
    Pods,
    conmons_under,
    leftovers,
    missing,
    pods,
)

from liner_api.runtime.v1 import api_pb2 as cri
from linerd.cri import meta, netns
from linerd.cri.stats import Stats
from linerd.errdefs import InvalidArgument, NotFound, Unavailable

pytestmark = [pytest.mark.integration, pytest.mark.skipif(bool(missing()), reason=missing())]

MODES = ["no-pause", "pause"]


def run(
    tmp_path: Path,
    net: Net,
    images: Images,
    body: Callable[[Pods], Awaitable[None]],
    *,
    drop_infra_ctr: bool = True,
) -> None:
    async def main() -> None:
        async with pods(tmp_path / "pods", net, images, drop_infra_ctr=drop_infra_ctr) as p:
            await body(p)

    asyncio.run(main())


def cgroup_dirs(relative: str) -> list[Path]:
    """`relative` in every cgroup v1 hierarchy (and v2's unified one) where it exists."""
    root = Path("/sys/fs/cgroup")
    return [d for d in (root / relative, *root.glob(f"*/{relative}")) if d.is_dir()]


def has_pause(p: Pods, pod: str) -> bool:
    try:
        return p.core.local.tasks.state(meta.NAMESPACE, pod).status.name == "RUNNING"
    except NotFound:
        return False


async def ns_inode(p: Pods, cid: str, kind: str) -> int:
    out = await p.exec(cid, "/bin/busybox", "readlink", f"/proc/self/ns/{kind}")
    assert out.exit_code == 0, out.stderr
    return int(out.stdout.strip().split(b"[")[1].rstrip(b"]"))


@pytest.mark.parametrize("mode", MODES)
def test_containers_share_the_pinned_namespaces(
    tmp_path: Path, net: Net, cri_images: Images, mode: str
) -> None:
    async def body(p: Pods) -> None:
        dns = cri.DNSConfig(servers=["10.10.10.10"], searches=["example.com"], options=["ndots:8"])
        config = p.sandbox_config("shared", hostname="shared-host", dns=dns, pid=cri.CONTAINER)
        # kubelet's pod cgroup: the containers go under it, with or without a pause.
        parent = f"/liner-test-pod-{secrets.token_hex(4)}"
        config.linux.cgroup_parent = parent
        # critest's sandbox sysctls, read back in the containers (IPC), and a net one.
        config.linux.sysctls.update(
            {
                "kernel.shm_rmid_forced": "1",
                "fs.mqueue.msg_max": "100",
                "net.ipv4.ip_unprivileged_port_start": "81",
            }
        )
        pod = await p.run_pod(config)
        assert has_pause(p, pod) == (mode == "pause")
        status = await p.sandbox_status(pod)
        assert status.state == cri.SANDBOX_READY
        assert IPv4Address(status.network.ip) in p.net.subnet
        assert status.linux.namespaces.options.pid == cri.CONTAINER
        m = meta.sandbox_meta(await p.core.local.containers.get(meta.NAMESPACE, pod))
        assert m.infra == (mode == "pause") and m.netns and m.ipcns and m.utsns

        a, b = [
            await p.create(pod, config, p.container_config(n, ["-c", "exec sleep 1000"]))
            for n in ("a", "b")
        ]
        for cid in (a, b):
            await p.containers.start_container(cri.StartContainerRequest(container_id=cid))
        # Both in the pinned net, IPC and UTS namespaces; each in its own pid namespace.
        for kind, pinned in (("net", m.netns), ("ipc", m.ipcns), ("uts", m.utsns)):
            inode = os.stat(pinned).st_ino
            assert await ns_inode(p, a, kind) == inode == await ns_inode(p, b, kind), kind
            assert inode != os.stat(f"/proc/self/ns/{kind}").st_ino
        assert await ns_inode(p, a, "pid") != await ns_inode(p, b, "pid")
        # IPC: a System V segment made in one is seen in the other; /dev/shm is one tmpfs.
        made = await p.exec(a, "sh", "-c", "echo -n hi > /dev/shm/note && cat /proc/sysvipc/shm")
        assert made.exit_code == 0
        seen = await p.exec(b, "cat", "/dev/shm/note")
        assert seen.stdout == b"hi"
        for key, want in (
            ("kernel/shm_rmid_forced", b"1\n"),
            ("fs/mqueue/msg_max", b"100\n"),
            ("net/ipv4/ip_unprivileged_port_start", b"81\n"),
        ):
            assert (await p.exec(b, "cat", f"/proc/sys/{key}")).stdout == want, key
        # UTS: the pod's hostname; DNS: the pod's resolv.conf; network: the pod's address.
        assert (await p.exec(a, "hostname")).stdout == b"shared-host\n"
        resolv = (await p.exec(b, "cat", "/etc/resolv.conf")).stdout
        assert resolv == b"search example.com\nnameserver 10.10.10.10\noptions ndots:8\n"
        addrs = (await p.exec(a, "cat", "/proc/net/fib_trie")).stdout
        assert status.network.ip.encode() in addrs
        for cid in (a, b):
            pid = p.core.local.tasks.state(meta.NAMESPACE, cid).pid
            lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
            assert any(line.endswith(f":{parent}/{cid}") for line in lines), lines
        # One conmon per container, and one for the pause where it runs.
        assert len(conmons_under(p.core.state)) == 2 + (mode == "pause")

        stats = Stats(p.sandboxes, p.containers)
        pod_stats = (
            await stats.pod_sandbox_stats(cri.PodSandboxStatsRequest(pod_sandbox_id=pod))
        ).stats
        assert len(pod_stats.linux.containers) == 2
        assert pod_stats.linux.process.process_count.value >= 2
        listed = await stats.list_pod_sandbox_stats(cri.ListPodSandboxStatsRequest())
        assert [s.attributes.id for s in listed.stats] == [pod]

        verbose = await p.sandboxes.pod_sandbox_status(
            cri.PodSandboxStatusRequest(pod_sandbox_id=pod, verbose=True)
        )
        assert '"ipcNamespacePath"' in verbose.info["info"]

        await p.sandboxes.stop_pod_sandbox(cri.StopPodSandboxRequest(pod_sandbox_id=pod))
        assert (await p.sandbox_status(pod)).state == cri.SANDBOX_NOTREADY
        assert leftovers(p, [pod, a, b]) == []
        assert [d for x in (pod, a, b) for d in cgroup_dirs(f"{parent}/{x}".lstrip("/"))] == []
        # The pod cgroup itself is kubelet's to remove (runc made it here).
        for d in cgroup_dirs(parent.lstrip("/")):
            with contextlib.suppress(OSError):
                d.rmdir()
        assert not any(Path(x).exists() for x in (m.netns, m.ipcns, m.utsns))
        await p.sandboxes.remove_pod_sandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=pod))
        assert leftovers(p, [pod, a, b]) == []

    run(tmp_path, net, cri_images, body, drop_infra_ctr=mode == "no-pause")


def test_a_shared_pid_namespace_keeps_the_pause(
    tmp_path: Path, net: Net, cri_images: Images
) -> None:
    async def body(p: Pods) -> None:
        shared = p.sandbox_config("pidpod", hostname="pidpod", pid=cri.POD)
        pod = await p.run_pod(shared)
        assert has_pause(p, pod)
        cid = await p.create(pod, shared, p.container_config("c", ["-c", "exec sleep 1000"]))
        await p.containers.start_container(cri.StartContainerRequest(container_id=cid))
        # pid 1 is the pause (the test pause image runs sleep), the container is beside it.
        first = (await p.exec(cid, "cat", "/proc/1/cmdline")).stdout.split(b"\0")
        assert first[:2] == [b"/bin/sleep", b"2147483647"]
        assert (await p.exec(cid, "hostname")).stdout == b"pidpod\n"

        # Without a pause there is no pod pid namespace to join (CRI-O refuses it too).
        own = p.sandbox_config("own", pid=cri.CONTAINER)
        lone = await p.run_pod(own)
        assert not has_pause(p, lone)
        wants_pod_pid = p.container_config(
            "c",
            ["-c", "true"],
            linux=cri.LinuxContainerConfig(
                security_context=cri.LinuxContainerSecurityContext(
                    namespace_options=cri.NamespaceOption(pid=cri.POD)
                )
            ),
        )
        with pytest.raises(InvalidArgument, match="pid namespace"):
            await p.containers.create_container(
                cri.CreateContainerRequest(
                    pod_sandbox_id=lone, config=wants_pod_pid, sandbox_config=own
                )
            )
        for x in (pod, lone):
            await p.sandboxes.remove_pod_sandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=x))
        assert leftovers(p, [pod, lone, cid]) == []

    run(tmp_path, net, cri_images, body)


def test_host_namespaces_without_a_pause(tmp_path: Path, net: Net, cri_images: Images) -> None:
    """Host network and IPC: nothing pinned, no pause, the host's namespaces and /dev/shm."""

    async def body(p: Pods) -> None:
        config = p.sandbox_config(network=cri.NODE, ipc=cri.NODE, pid=cri.CONTAINER)
        pod = await p.run_pod(config)
        assert not has_pause(p, pod)
        status = await p.sandbox_status(pod)
        assert status.state == cri.SANDBOX_READY and status.network.ip == ""
        m = meta.sandbox_meta(await p.core.local.containers.get(meta.NAMESPACE, pod))
        assert (m.netns, m.ipcns, m.utsns, m.shm) == ("", "", "", "")
        cid = await p.create(pod, config, p.container_config("c", ["-c", "exec sleep 1000"]))
        await p.containers.start_container(cri.StartContainerRequest(container_id=cid))
        for kind in ("net", "ipc", "uts"):
            assert await ns_inode(p, cid, kind) == os.stat(f"/proc/self/ns/{kind}").st_ino
        # A sysctl of a namespace the pod shares with the host is refused, as runc does.
        bad = p.sandbox_config(network=cri.NODE, pid=cri.CONTAINER)
        bad.linux.sysctls["net.core.somaxconn"] = "100"
        with pytest.raises(InvalidArgument, match="host's net"):
            await p.run_pod(bad)
        await p.sandboxes.remove_pod_sandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=pod))
        assert leftovers(p, [pod, cid]) == []

    run(tmp_path, net, cri_images, body)


def test_orphan_namespaces_are_reaped_on_first_use(
    tmp_path: Path, net: Net, cri_images: Images
) -> None:
    """A crash between pinning a pod's namespaces and saving their paths leaves files no
    record names: the group's first call unpins and deletes them (net, IPC and UTS alike)."""

    async def body(p: Pods) -> None:
        kinds = [netns.NET, netns.IPC, netns.UTS]
        orphans = await asyncio.to_thread(netns.create_pod, p.sandboxes.netns_dir, kinds, "x")
        assert all(netns.is_pinned(path) for path in orphans.values())
        config = p.sandbox_config(pid=cri.CONTAINER)
        pod = await p.run_pod(config)
        assert not any(path.exists() for path in orphans.values())
        m = meta.sandbox_meta(await p.core.local.containers.get(meta.NAMESPACE, pod))
        assert all(netns.is_pinned(path) for path in (m.netns, m.ipcns, m.utsns))
        await p.sandboxes.remove_pod_sandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=pod))
        assert leftovers(p, [pod]) == []

    run(tmp_path, net, cri_images, body)


@pytest.mark.parametrize("pid", [cri.POD, cri.CONTAINER])
def test_a_record_that_cannot_be_saved_leaves_no_namespaces_or_files(
    tmp_path: Path, net: Net, cri_images: Images, monkeypatch: pytest.MonkeyPatch, pid: int
) -> None:
    """The pod's files and namespaces come before its record (created naming them, with the
    pause's snapshot): when the record's transaction fails, the run removes them itself (no
    record names them for StopPodSandbox), and the name is free again."""

    async def body(p: Pods) -> None:
        config = p.sandbox_config("unsaved", pid=pid)
        await p.sandboxes.load()  # the group's start-up reaping is done before the failure
        containers = p.core.local.containers
        failing = Unavailable("database is locked")

        async def refuse(*args: object, **kwargs: object) -> None:
            raise failing

        with monkeypatch.context() as patched:
            patched.setattr(containers, "create", refuse)
            patched.setattr(containers, "create_with_snapshot", refuse)
            with pytest.raises(Unavailable, match="database is locked"):
                await p.run_pod(config)
        assert await containers.list(meta.NAMESPACE) == []
        assert leftovers(p, []) == []  # no namespace mount, no lease, no conmon
        assert netns.list_pinned(p.sandboxes.netns_dir) == []
        assert not p.sandboxes.files_dir.is_dir() or not list(p.sandboxes.files_dir.iterdir())
        left = await p.core.local.snapshots.list(meta.NAMESPACE, "")
        assert [s.name for s in left if s.kind.name != "COMMITTED"] == []
        pod = await p.run_pod(config)  # the name is free again
        assert (await p.sandbox_status(pod)).state == cri.SANDBOX_READY
        await p.sandboxes.remove_pod_sandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=pod))
        assert leftovers(p, [pod]) == []

    run(tmp_path, net, cri_images, body)


def test_a_failure_beside_the_pauses_start_unwinds_both(
    tmp_path: Path, net: Net, cri_images: Images
) -> None:
    """With a pause, CNI ADD and the sysctls run while the pause starts: a sysctl the kernel
    refuses (after CNI ADD) fails the run once the pause is up too, and both are undone."""

    async def body(p: Pods) -> None:
        config = p.sandbox_config("refused", pid=cri.POD)
        config.linux.sysctls["net.ipv4.ip_local_port_range"] = "not numbers"
        with pytest.raises(InvalidArgument, match="ip_local_port_range"):
            await p.run_pod(config)
        assert await p.core.local.containers.list(meta.NAMESPACE) == []
        assert leftovers(p, []) == []  # CNI DEL ran (no host-local lease), no conmon
        left = await p.core.local.snapshots.list(meta.NAMESPACE, "")
        assert [s.name for s in left if s.kind.name != "COMMITTED"] == []
        del config.linux.sysctls["net.ipv4.ip_local_port_range"]
        pod = await p.run_pod(config)  # the name is free again
        assert has_pause(p, pod)
        assert IPv4Address((await p.sandbox_status(pod)).network.ip) in net.subnet
        await p.sandboxes.remove_pod_sandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=pod))
        assert leftovers(p, [pod]) == []

    run(tmp_path, net, cri_images, body)
