"""The CRI's kept lists (cri/records.py) in real pods: an exit nobody asked the CRI about, a
pause killed from outside, a record removed or changed with the containerd API, each seen by
the next ListContainers / ListPodSandbox / status, with no CRI write in between."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from cri_pods_support import Images, Net, Pods, drop_net, make_net, missing, pods, push_images
from registry import Registry

from liner_api.runtime.v1 import api_pb2 as cri
from linerd.cri import meta

pytestmark = [pytest.mark.integration, pytest.mark.skipif(bool(missing()), reason=missing())]


@pytest.fixture(scope="module")
def cri_images(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Images:
    return push_images(registry, tmp_path_factory.mktemp("cri-images"))


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Net]:
    n = make_net(tmp_path / "net")
    try:
        yield n
    finally:
        drop_net(n)


async def containers(p: Pods) -> dict[str, int]:
    listed = await p.containers.list_containers(cri.ListContainersRequest())
    return {c.id: c.state for c in listed.containers}


async def sandboxes(p: Pods) -> dict[str, int]:
    listed = await p.sandboxes.list_pod_sandbox(cri.ListPodSandboxRequest())
    return {s.id: s.state for s in listed.items}


def test_lists_follow_exits_and_writes_from_outside(
    tmp_path: Path, net: Net, cri_images: Images
) -> None:
    async def body(p: Pods) -> None:
        tasks, local = p.core.local.tasks, p.core.local.containers
        config = p.sandbox_config()
        pod = await p.run_pod(config)
        running = await p.create(pod, config, p.container_config("run", ["-c", "sleep 3600"]))
        await p.containers.start_container(cri.StartContainerRequest(container_id=running))
        idle = await p.create(pod, config, p.container_config("idle", ["-c", "true"]))
        want = {running: cri.CONTAINER_RUNNING, idle: cri.CONTAINER_CREATED}
        assert await containers(p) == want
        assert await containers(p) == want  # the kept list, with live states
        assert await sandboxes(p) == {pod: cri.SANDBOX_READY}

        # An exit the CRI did not cause (an OOM kill, say): the next list shows it.
        await tasks.kill(meta.NAMESPACE, running, signal.SIGKILL)
        await tasks.wait(meta.NAMESPACE, running)
        assert (await containers(p))[running] == cri.CONTAINER_EXITED
        status = await p.status(running)
        assert (status.state, status.exit_code, status.reason) == (
            cri.CONTAINER_EXITED,
            137,
            "Error",
        )
        exited = cri.ContainerFilter(state=cri.ContainerStateValue(state=cri.CONTAINER_EXITED))
        listed = await p.containers.list_containers(cri.ListContainersRequest(filter=exited))
        assert [c.id for c in listed.containers] == [running]

        # The pod's pause killed from outside: not ready at the next list and status.
        await tasks.kill(meta.NAMESPACE, pod, signal.SIGKILL)
        await tasks.wait(meta.NAMESPACE, pod)
        assert await sandboxes(p) == {pod: cri.SANDBOX_NOTREADY}
        assert (await p.sandbox_status(pod)).state == cri.SANDBOX_NOTREADY

        # The containerd API (ctr -n k8s.io containers label / rm) writes the same records.
        record = await local.get(meta.NAMESPACE, idle)
        record.labels["io.kubernetes.container.name"] = "relabelled"
        await local.update(meta.NAMESPACE, record, ["labels.io.kubernetes.container.name"])
        kept = await p.containers.records.entries(meta.KIND_CONTAINER)
        assert {e.record.id: e.record.labels.get("io.kubernetes.container.name") for e in kept}[
            idle
        ] == "relabelled"
        await p.core.local.snapshots.remove(meta.NAMESPACE, record.snapshotter, record.snapshot_key)
        await local.delete(meta.NAMESPACE, idle)
        assert await containers(p) == {running: cri.CONTAINER_EXITED}

    async def main() -> None:
        async with pods(tmp_path / "pods", net, cri_images) as p:
            await body(p)

    asyncio.run(main())
