"""What the CRI keeps in memory, in real pods: the lists (cri/records.py) see an exit nobody
asked the CRI about, a pause killed from outside, a record removed or changed with the
containerd API, with no CRI write in between; an image's user databases (kept per chain ID
by cri/containers.py) answer each image's own users."""

from __future__ import annotations

import asyncio
import json
import secrets
import signal
from pathlib import Path

import pytest
from cri_pods_support import Images, Net, Pods, missing, pods
from cri_support import push_busybox_image
from imagebuild import file
from registry import Registry

from liner_api.runtime.v1 import api_pb2 as cri
from linerd.cri import meta

pytestmark = [pytest.mark.integration, pytest.mark.skipif(bool(missing()), reason=missing())]


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


def test_statuses_follow_every_change_of_state(
    tmp_path: Path, net: Net, cri_images: Images
) -> None:
    # The statuses are answered from bytes kept per record decoding and state
    # (cri/records.py): each change a client sees must show at the next call, and a repeated
    # call answer what the first did.
    async def body(p: Pods) -> None:
        config = p.sandbox_config()
        pod = await p.run_pod(config)
        cid = await p.create(pod, config, p.container_config("c", ["-c", "sleep 3600"]))
        created = await p.status(cid)
        assert created.state == cri.CONTAINER_CREATED and created.started_at == 0
        assert await p.status(cid) == created
        await p.containers.start_container(cri.StartContainerRequest(container_id=cid))
        running = await p.status(cid)
        assert running.state == cri.CONTAINER_RUNNING and running.started_at > 0
        assert await p.status(cid) == running
        verbose = await p.containers.container_status(
            cri.ContainerStatusRequest(container_id=cid, verbose=True)
        )
        assert verbose.status == running
        assert json.loads(verbose.info["info"])["pid"] > 0

        # An exit nobody asked the CRI about: the exit code and time at the next status.
        await p.core.local.tasks.kill(meta.NAMESPACE, cid, signal.SIGKILL)
        await p.core.local.tasks.wait(meta.NAMESPACE, cid)
        exited = await p.status(cid)
        assert (exited.state, exited.exit_code, exited.reason) == (
            cri.CONTAINER_EXITED,
            137,
            "Error",
        )
        # (finished_at is the exit file's mtime: the kernel's coarse clock, maybe behind
        # started_at by a tick when the kill follows the start at once)
        assert exited.finished_at > 0 and exited.started_at == running.started_at
        assert await p.status(cid) == exited

        # A pod's status: its timestamp is the call's; the rest kept while it stays ready.
        first = await p.sandboxes.pod_sandbox_status(
            cri.PodSandboxStatusRequest(pod_sandbox_id=pod)
        )
        again = await p.sandboxes.pod_sandbox_status(
            cri.PodSandboxStatusRequest(pod_sandbox_id=pod)
        )
        assert first.status.state == cri.SANDBOX_READY and first.status == again.status
        assert 0 < first.timestamp <= again.timestamp
        await p.sandboxes.stop_pod_sandbox(cri.StopPodSandboxRequest(pod_sandbox_id=pod))
        stopped = await p.sandbox_status(pod)
        assert stopped.state == cri.SANDBOX_NOTREADY
        assert (stopped.id, stopped.created_at) == (first.status.id, first.status.created_at)
        await p.containers.remove_container(cri.RemoveContainerRequest(container_id=cid))
        assert await containers(p) == {}
        await p.sandboxes.remove_pod_sandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=pod))
        assert await sandboxes(p) == {}

    async def main() -> None:
        async with pods(tmp_path / "pods", net, cri_images) as p:
            await body(p)

    asyncio.run(main())


def test_users_are_each_images_own_and_read_once_per_image(
    tmp_path: Path, net: Net, cri_images: Images, registry: Registry
) -> None:
    def image(repo: str, uid: int) -> str:
        passwd = file("etc/passwd", f"root:x:0:0::/root:/bin/sh\napp:x:{uid}:{uid}::/:/bin/sh\n")
        group = file("etc/group", f"root:x:0:\napp:x:{uid}:\nextra:x:77:app\n")
        return push_busybox_image(registry, tmp_path, repo, extra=[passwd, group]).ref()

    first, second = image("cache/users-a", 1234), image("cache/users-b", 4321)

    async def body(p: Pods) -> None:
        for ref in (first, second):
            await p.core.local.transfer.pull(meta.NAMESPACE, ref, plain_http=True)
        config = p.sandbox_config()
        pod = await p.run_pod(config)
        # The pod has a pause (pid POD): the sandbox image's users are kept as well, and the
        # next pods' pause specs need no mount.
        kept = len(p.containers._image_users)
        assert kept == 1

        async def user_of(ref: str) -> dict[str, object]:
            c = p.container_config(f"c{secrets.token_hex(3)}", ["-c", "true"])
            c.image.image = ref
            c.linux.security_context.run_as_username = "app"
            cid = await p.create(pod, config, c)
            record = await p.core.local.containers.get(meta.NAMESPACE, cid)
            assert record.spec is not None
            return json.loads(record.spec.value)["process"]["user"]

        for _ in range(2):  # the second round reads nothing from a mount
            assert await user_of(first) == {"uid": 1234, "gid": 1234, "additionalGids": [77, 1234]}
            assert await user_of(second) == {"uid": 4321, "gid": 4321, "additionalGids": [77, 4321]}
            assert len(p.containers._image_users) == kept + 2

    async def main() -> None:
        async with pods(tmp_path / "pods", net, cri_images) as p:
            await body(p)

    asyncio.run(main())
