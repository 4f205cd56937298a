"""Pod sandboxes through the `sandboxes` handler group, in process, on real runc, conmon,
overlay and CNI (cri_pods_support.py): run, status, list with filters, stop, remove, the pod's
files and namespaces, host network, name reservation, and nothing left behind.

containerd differences (its CRI plugin is the reference): none known for what is asserted
here; containerd answers an unknown sandbox's StopPodSandbox with NotFound too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from cri_pods_support import (
    Images,
    Net,
    Pods,
    leftovers,
    missing,
    pods,
)

from liner_api.runtime.v1 import api_pb2 as cri
from linerd.core.types import Container
from linerd.cri import meta
from linerd.errdefs import AlreadyExists, NotFound

pytestmark = [pytest.mark.integration, pytest.mark.skipif(bool(missing()), reason=missing())]


def run(tmp_path: Path, net: Net, images: Images, body: Callable[[Pods], Awaitable[None]]) -> None:
    async def main() -> None:
        async with pods(tmp_path / "pods", net, images) as p:
            await body(p)

    asyncio.run(main())


def test_pod_lifecycle(tmp_path: Path, net: Net, cri_images: Images) -> None:
    async def body(p: Pods) -> None:
        dns = cri.DNSConfig(servers=["10.10.10.10"], searches=["example.com"], options=["ndots:8"])
        config = p.sandbox_config("web", hostname="web-host", dns=dns, labels={"app": "web"})
        pod = await p.run_pod(config)
        assert len(pod) == 64

        status = await p.sandbox_status(pod)
        assert status.state == cri.SANDBOX_READY
        assert IPv4Address(status.network.ip) in net.subnet
        assert status.metadata == config.metadata and status.created_at > 0
        assert dict(status.labels) == {"app": "web"}
        assert dict(status.annotations) == {"note": "a b c"}
        assert status.linux.namespaces.options == config.linux.security_context.namespace_options
        assert net.leases() == [status.network.ip]

        # The record in k8s.io, as `ctr -n k8s.io containers ls` sees it.
        record: Container = await p.core.local.containers.get(meta.NAMESPACE, pod)
        assert record.labels[meta.KIND_LABEL] == "sandbox" and record.labels["app"] == "web"
        m = meta.sandbox_meta(record)
        files = Path(m.files)
        assert (files / "hostname").read_text() == "web-host\n"
        assert (files / "resolv.conf").read_text() == (
            "search example.com\nnameserver 10.10.10.10\noptions ndots:8\n"
        )
        spec = __import__("json").loads(record.spec.value)
        assert spec["annotations"][meta.A_CONTAINER_TYPE] == "sandbox"
        assert spec["annotations"][meta.A_SANDBOX_NAME] == "web"
        assert spec["root"]["readonly"] is True and spec["hostname"] == "web-host"

        # Filters: id prefix, state, labels (AND).
        async def listed(**f: object) -> list[str]:
            req = cri.ListPodSandboxRequest(filter=cri.PodSandboxFilter(**f))  # type: ignore[arg-type]
            return [i.id for i in (await p.sandboxes.list_pod_sandbox(req)).items]

        assert await listed() == [pod]
        assert await listed(id=pod[:12]) == [pod]
        assert await listed(id="0" * 64) == []
        ready = cri.PodSandboxStateValue(state=cri.SANDBOX_READY)
        notready = cri.PodSandboxStateValue(state=cri.SANDBOX_NOTREADY)
        assert await listed(state=ready) == [pod]
        assert await listed(state=notready) == []
        assert await listed(label_selector={"app": "web"}) == [pod]
        assert await listed(label_selector={"app": "web", "x": "y"}) == []

        # The same name again is refused while the pod exists.
        with pytest.raises(AlreadyExists, match="reserved"):
            await p.run_pod(config)

        await p.sandboxes.stop_pod_sandbox(cri.StopPodSandboxRequest(pod_sandbox_id=pod))
        assert (await p.sandbox_status(pod)).state == cri.SANDBOX_NOTREADY
        assert await listed(state=notready) == [pod]
        assert leftovers(p, [pod]) == []
        await p.sandboxes.stop_pod_sandbox(cri.StopPodSandboxRequest(pod_sandbox_id=pod))

        await p.sandboxes.remove_pod_sandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=pod))
        await p.sandboxes.remove_pod_sandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=pod))
        assert await listed() == []
        with pytest.raises(NotFound):
            await p.sandbox_status(pod)
        assert not files.exists()
        with pytest.raises(NotFound):
            await p.core.local.containers.get(meta.NAMESPACE, pod)
        # The name is free again.
        again = await p.run_pod(config)
        assert again != pod

    run(tmp_path, net, cri_images, body)


def test_remove_without_stop_and_unknown_ids(tmp_path: Path, net: Net, cri_images: Images) -> None:
    async def body(p: Pods) -> None:
        pod = await p.run_pod(p.sandbox_config(port_mappings=[]))
        await p.sandboxes.remove_pod_sandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=pod))
        assert leftovers(p, [pod]) == []
        with pytest.raises(NotFound):
            await p.sandbox_status("f" * 64)
        with pytest.raises(NotFound):
            await p.sandboxes.stop_pod_sandbox(cri.StopPodSandboxRequest(pod_sandbox_id="f" * 64))

    run(tmp_path, net, cri_images, body)


def test_host_network_pod(tmp_path: Path, net: Net, cri_images: Images) -> None:
    async def body(p: Pods) -> None:
        config = p.sandbox_config(network=cri.NODE)
        pod = await p.run_pod(config)
        status = await p.sandbox_status(pod)
        assert status.state == cri.SANDBOX_READY and status.network.ip == ""
        assert status.linux.namespaces.options.network == cri.NODE
        record = await p.core.local.containers.get(meta.NAMESPACE, pod)
        spec = __import__("json").loads(record.spec.value)
        kinds = {n["type"] for n in spec["linux"]["namespaces"]}
        assert "network" not in kinds and "uts" not in kinds and "hostname" not in spec
        assert net.leases() == []
        await p.sandboxes.remove_pod_sandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=pod))
        assert leftovers(p, [pod]) == []

    run(tmp_path, net, cri_images, body)
