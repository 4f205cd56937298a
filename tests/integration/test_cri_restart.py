"""Pods and containers outlive a restart of linerd, and a crash at each named point of
RunPodSandbox and CreateContainer leaves a state the CRI calls finish or clean up, with no
leaked netns mount, host-local lease, iptables rule, conmon or cgroup.

A restart is simulated in process (the Core closed and built again on the same root and
state: the runtime recovers its tasks from the state dir, the CRI its records); a crash
is a second process SIGKILLed at a `linerd.faults` point (LINERD_CRASH_AT).
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest
from cri_pods_support import (
    Images,
    Net,
    Pods,
    build,
    close_core,
    leftovers,
    missing,
    open_core,
    run_child,
)
from registry import Registry

from liner_api.runtime.v1 import api_pb2 as cri
from linerd.cri import meta

pytestmark = [pytest.mark.integration, pytest.mark.skipif(bool(missing()), reason=missing())]


async def _opened(base: Path, net: Net, images: Images) -> Pods:
    core = await open_core(base)
    sandboxes, containers = build(core, net, images)
    return Pods(core, sandboxes, containers, net, images, base)


# A pod with a pause (its containers share its pid namespace) and one without (CRI-O's
# drop_infra_ctr: the pod's pinned namespaces are all that holds it).
PID_MODES = [pytest.param(cri.POD, id="pause"), pytest.param(cri.CONTAINER, id="no-pause")]


@pytest.mark.parametrize("pid", PID_MODES)
def test_pods_and_containers_outlive_a_restart(
    tmp_path: Path, net: Net, cri_images: Images, pid: int
) -> None:
    base = tmp_path / "pods"

    async def before() -> tuple[str, str, str, str]:
        p = await _opened(base, net, cri_images)
        await p.core.local.transfer.pull(meta.NAMESPACE, cri_images.busybox, plain_http=True)
        config = p.sandbox_config("survivor", hostname="survivor", pid=pid)
        pod = await p.run_pod(config)
        ip = (await p.sandbox_status(pod)).network.ip
        running = await p.create(pod, config, p.container_config("run", ["-c", "exec sleep 1000"]))
        quits = await p.create(pod, config, p.container_config("quit", ["-c", "exec sleep 1000"]))
        for cid in (running, quits):
            await p.containers.start_container(cri.StartContainerRequest(container_id=cid))
        await close_core(p.core)  # linerd goes away; conmons and containers stay
        return pod, ip, running, quits

    pod, ip, running, quits = asyncio.run(before())

    async def after() -> None:
        p = await _opened(base, net, cri_images)
        try:
            status = await p.sandbox_status(pod)
            assert status.state == cri.SANDBOX_READY and status.network.ip == ip
            assert (await p.status(running)).state == cri.CONTAINER_RUNNING
            # A new container joins the pod found again (its pinned namespaces, or its pause).
            config = cri.PodSandboxConfig.FromString(
                meta.sandbox_meta(await p.core.local.containers.get(meta.NAMESPACE, pod)).config
            )
            late = await p.create(pod, config, p.container_config("late", ["-c", "hostname"]))
            await p.containers.start_container(cri.StartContainerRequest(container_id=late))
            assert (await p.wait_exited(late)).exit_code == 0
            # The exit of a process that ends after the restart is seen with its code.
            st = p.core.local.tasks.state(meta.NAMESPACE, quits)
            assert st.status.name == "RUNNING"
            await p.core.local.tasks.kill(meta.NAMESPACE, quits, signal.SIGKILL)
            done = await p.wait_exited(quits)
            assert (done.state, done.exit_code, done.reason) == (cri.CONTAINER_EXITED, 137, "Error")
            out = await p.exec(running, "hostname")
            assert out.stdout == b"survivor\n"
            await p.sandboxes.stop_pod_sandbox(cri.StopPodSandboxRequest(pod_sandbox_id=pod))
            await p.sandboxes.remove_pod_sandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=pod))
            assert leftovers(p, [pod, running, quits, late]) == []
        finally:
            await p.remove_all()
            await close_core(p.core)

    asyncio.run(after())


@pytest.mark.parametrize(
    "point,what,pid",
    [
        ("cri-sandbox-netns-created", "sandbox", cri.POD),
        ("cri-sandbox-cni-added", "sandbox", cri.POD),
        ("cri-sandbox-started", "sandbox", cri.POD),
        ("cri-container-created", "container", cri.POD),
        # No pause: the pinned net, IPC and UTS namespaces alone are what a crash leaves.
        ("cri-sandbox-cni-added", "sandbox", cri.CONTAINER),
        ("cri-container-created", "container", cri.CONTAINER),
    ],
)
def test_crash_points_leave_nothing_after_cleanup(
    point: str, what: str, pid: int, tmp_path: Path, net: Net, cri_images: Images
) -> None:
    base = tmp_path / "pods"
    base.mkdir()
    child = run_child(base, net, cri_images, what, point, pid)
    assert child.returncode == -signal.SIGKILL, child.stderr[-3000:]

    async def after() -> None:
        p = await _opened(base, net, cri_images)
        try:
            listed = await p.sandboxes.list_pod_sandbox(cri.ListPodSandboxRequest())
            assert len(listed.items) == 1
            pod = listed.items[0].id
            ready = point in ("cri-container-created",)
            assert (listed.items[0].state == cri.SANDBOX_READY) == ready
            ids = [pod]
            if what == "container":
                cs = await p.containers.list_containers(cri.ListContainersRequest())
                assert [c.state for c in cs.containers] == [cri.CONTAINER_CREATED]
                ids.append(cs.containers[0].id)
            await p.sandboxes.stop_pod_sandbox(cri.StopPodSandboxRequest(pod_sandbox_id=pod))
            await p.sandboxes.remove_pod_sandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=pod))
            assert leftovers(p, ids) == []
            assert await p.core.local.containers.list(meta.NAMESPACE) == []
            leases = await p.core.local.leases.list(meta.NAMESPACE)
            assert [x.id for x in leases if x.id.startswith("cri-")] == []
            # A new pod runs beside what the crash left.
            again = await p.run_pod(p.sandbox_config("crashing"))
            await p.sandboxes.remove_pod_sandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=again))
            assert leftovers(p, [again]) == []
        finally:
            await p.remove_all()
            await close_core(p.core)

    asyncio.run(after())


@pytest.mark.parametrize("pid", PID_MODES)
def test_a_killed_daemon_comes_back_with_its_pods(
    tmp_path: Path, pause_image: str, registry: Registry, pid: int
) -> None:
    """The real daemon, SIGKILLed and started again on the same root and state: its pods and
    containers answer with their states and exit codes, and go away cleanly after."""
    from cri_support import liner_config, new_pod_network, push_busybox_image
    from support import Linerd

    from liner_api.runtime.v1 import api_pb2_grpc

    image = push_busybox_image(registry, tmp_path / "img", "liner-test/cri-restart").ref()
    net = new_pod_network(tmp_path / "net")
    config = tmp_path / "linerd.toml"
    config.write_text(liner_config(net, pause_image, registry.host))
    daemon = Linerd(tmp_path / "linerd", extra_args=["--config", str(config)])
    forward = Path("/proc/sys/net/ipv4/ip_forward")
    before = forward.read_text()  # bridge's isGateway turns forwarding on
    daemon.start()
    try:
        with daemon.channel() as channel:
            rt = api_pb2_grpc.RuntimeServiceStub(channel)
            api_pb2_grpc.ImageServiceStub(channel).PullImage(
                cri.PullImageRequest(image=cri.ImageSpec(image=image)), timeout=120
            )
            pod_config = cri.PodSandboxConfig(
                metadata=cri.PodSandboxMetadata(name="p", namespace="default", uid="u-restart"),
                hostname="restarted",
                log_directory=str(tmp_path / "logs"),
                linux=cri.LinuxPodSandboxConfig(
                    security_context=cri.LinuxSandboxSecurityContext(
                        namespace_options=cri.NamespaceOption(pid=pid)
                    )
                ),
            )
            pod = rt.RunPodSandbox(
                cri.RunPodSandboxRequest(config=pod_config), timeout=120
            ).pod_sandbox_id
            ip = rt.PodSandboxStatus(
                cri.PodSandboxStatusRequest(pod_sandbox_id=pod), timeout=30
            ).status.network.ip

            def container(name: str, script: str) -> str:
                cid = rt.CreateContainer(
                    cri.CreateContainerRequest(
                        pod_sandbox_id=pod,
                        sandbox_config=pod_config,
                        config=cri.ContainerConfig(
                            metadata=cri.ContainerMetadata(name=name),
                            image=cri.ImageSpec(image=image),
                            command=["/bin/sh", "-c", script],
                            log_path=f"{name}.log",
                            linux=cri.LinuxContainerConfig(
                                security_context=cri.LinuxContainerSecurityContext(
                                    namespace_options=cri.NamespaceOption(pid=pid)
                                )
                            ),
                        ),
                    ),
                    timeout=60,
                ).container_id
                rt.StartContainer(cri.StartContainerRequest(container_id=cid), timeout=60)
                return cid

            running = container("run", "exec sleep 1000")
            quits = container("quit", "exit 3")
        daemon.kill()
        daemon.start()
        with daemon.channel() as channel:
            rt = api_pb2_grpc.RuntimeServiceStub(channel)
            status = rt.PodSandboxStatus(
                cri.PodSandboxStatusRequest(pod_sandbox_id=pod), timeout=30
            )
            assert status.status.state == cri.SANDBOX_READY and status.status.network.ip == ip
            st = rt.ContainerStatus(cri.ContainerStatusRequest(container_id=running), timeout=30)
            assert st.status.state == cri.CONTAINER_RUNNING
            st = rt.ContainerStatus(cri.ContainerStatusRequest(container_id=quits), timeout=30)
            assert (st.status.state, st.status.exit_code, st.status.reason) == (
                cri.CONTAINER_EXITED,
                3,
                "Error",
            )
            out = rt.ExecSync(
                cri.ExecSyncRequest(container_id=running, cmd=["hostname"]), timeout=30
            )
            assert out.stdout == b"restarted\n"
            rt.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=pod), timeout=60)
            rt.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=pod), timeout=60)
            assert not rt.ListPodSandbox(cri.ListPodSandboxRequest(), timeout=30).items
        info = Path("/proc/self/mountinfo").read_text()
        assert str(daemon.state / "cri") not in info
        assert not list((net.ipam_dir / net.name).glob("10.*"))
    finally:
        daemon.stop()
        net.remove()
        forward.write_text(before)


@pytest.mark.parametrize("point", ["container-create", "snapshot-prepare", "cri-container-created"])
def test_a_crash_in_the_images_next_container_keeps_both_or_neither(
    point: str, tmp_path: Path, net: Net, cri_images: Images
) -> None:
    """The image's second container: its snapshot and its record are written in one
    transaction (no lease). A crash inside it leaves neither (only a directory no record
    names, which start-up removes), a crash after it both."""
    from linerd.fsck import check_store

    base = tmp_path / "pods"
    base.mkdir()
    child = run_child(base, net, cri_images, "second", point, cri.CONTAINER)
    assert child.returncode == -signal.SIGKILL, child.stderr[-3000:]
    root = base / "root"
    findings = [f for f in check_store(root, base / "state") if f.kind != "orphan-snapshot-dir"]
    assert findings == [], "\n".join(map(str, findings))

    async def after() -> None:
        p = await _opened(base, net, cri_images)
        try:
            for store in p.core.snapshots.values():
                await store.cleanup()  # as start-up does
            assert check_store(root, base / "state") == []
            listed = await p.containers.list_containers(cri.ListContainersRequest())
            names = sorted(c.metadata.name for c in listed.containers)
            assert names == (["c", "c1"] if point == "cri-container-created" else ["c1"])
            snapshots = await p.core.local.snapshots.list(meta.NAMESPACE, "")
            active = sorted(s.name for s in snapshots if s.kind.name == "ACTIVE")
            assert active == sorted(c.id for c in listed.containers)  # no pause: no other
            leases = await p.core.local.leases.list(meta.NAMESPACE)
            assert [x.id for x in leases if x.id.startswith("cri-")] == []
            # The name of a container that was never recorded is free again.
            pod = (await p.sandboxes.list_pod_sandbox(cri.ListPodSandboxRequest())).items[0]
            config = cri.PodSandboxConfig.FromString(
                meta.sandbox_meta(await p.core.local.containers.get(meta.NAMESPACE, pod.id)).config
            )
            if point != "cri-container-created":
                await p.create(pod.id, config, p.container_config("c", ["-c", "true"]))
            await p.sandboxes.stop_pod_sandbox(cri.StopPodSandboxRequest(pod_sandbox_id=pod.id))
            await p.sandboxes.remove_pod_sandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=pod.id))
            assert leftovers(p, [pod.id]) == []
            left = await p.core.local.snapshots.list(meta.NAMESPACE, "")
            assert [s.name for s in left if s.kind.name != "COMMITTED"] == []
        finally:
            await p.remove_all()
            await close_core(p.core)

    asyncio.run(after())
