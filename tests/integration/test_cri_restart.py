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
from collections.abc import Iterator
from pathlib import Path

import pytest
from cri_pods_support import (
    Images,
    Net,
    Pods,
    build,
    close_core,
    drop_net,
    leftovers,
    make_net,
    missing,
    open_core,
    push_images,
    run_child,
)
from registry import Registry

from liner_api.runtime.v1 import api_pb2 as cri
from linerd.cri import meta

pytestmark = [pytest.mark.integration, pytest.mark.skipif(bool(missing()), reason=missing())]


@pytest.fixture(scope="session")
def cri_images(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Images:
    return push_images(registry, tmp_path_factory.mktemp("cri-images"))


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Net]:
    n = make_net(tmp_path / "net")
    try:
        yield n
    finally:
        drop_net(n)


async def _opened(base: Path, net: Net, images: Images) -> Pods:
    core = await open_core(base)
    sandboxes, containers = build(core, net, images)
    return Pods(core, sandboxes, containers, net, images, base)


def test_pods_and_containers_outlive_a_restart(
    tmp_path: Path, net: Net, cri_images: Images
) -> None:
    base = tmp_path / "pods"

    async def before() -> tuple[str, str, str, str]:
        p = await _opened(base, net, cri_images)
        await p.core.local.transfer.pull(meta.NAMESPACE, cri_images.busybox, plain_http=True)
        config = p.sandbox_config("survivor", hostname="survivor")
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
            assert leftovers(p, [pod, running, quits]) == []
        finally:
            await p.remove_all()
            await close_core(p.core)

    asyncio.run(after())


@pytest.mark.parametrize(
    "point,what",
    [
        ("cri-sandbox-netns-created", "sandbox"),
        ("cri-sandbox-cni-added", "sandbox"),
        ("cri-sandbox-started", "sandbox"),
        ("cri-container-created", "container"),
    ],
)
def test_crash_points_leave_nothing_after_cleanup(
    point: str, what: str, tmp_path: Path, net: Net, cri_images: Images
) -> None:
    base = tmp_path / "pods"
    base.mkdir()
    child = run_child(base, net, cri_images, what, point)
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
