"""The streaming group's view of CRI objects, read from the containerd records they are.

A CRI sandbox or container is a container record in `k8s.io` with the label
`io.cri-containerd.kind` (`sandbox` | `container`) and the same id, its task by that id. A
pod's network namespace is read from the sandbox's OCI spec: a `network` namespace with a
path is the pinned netns; one without a path, the sandbox task's own (`/proc/<pid>/ns/net`);
none at all, the host's. The CRI's container group may hand in its own lookup instead.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from linerd.cri import NAMESPACE
from linerd.errdefs import LinerError, NotFound
from linerd.runtime import TaskStatus

if TYPE_CHECKING:
    from linerd.core.types import Container
    from linerd.local.containers import Containers
    from linerd.local.tasks import Tasks

KIND_LABEL = "io.cri-containerd.kind"


class RecordLookup:
    def __init__(self, containers: Containers, tasks: Tasks, namespace: str = NAMESPACE) -> None:
        self.containers = containers
        self.tasks = tasks
        self.namespace = namespace

    async def _record(self, object_id: str, kind: str) -> Container:
        what = "pod sandbox" if kind == "sandbox" else "container"
        if not object_id:
            raise NotFound(f"{what} id is empty")
        try:
            record = await self.containers.get(self.namespace, object_id)
        except NotFound:
            raise NotFound(f"{what} {object_id} not found") from None
        if record.labels.get(KIND_LABEL) != kind:
            raise NotFound(f"{what} {object_id} not found")
        return record

    async def container(self, container_id: str) -> tuple[str, str]:
        record = await self._record(container_id, "container")
        return self.namespace, record.id

    async def sandbox_netns(self, sandbox_id: str) -> str | None:
        record = await self._record(sandbox_id, "sandbox")
        spec = {}
        if record.spec is not None:
            try:
                spec = json.loads(record.spec.value)
            except ValueError:
                spec = {}
        namespaces = (spec.get("linux") or {}).get("namespaces") or []
        network = next((n for n in namespaces if n.get("type") == "network"), None)
        if network is None:
            return None  # host network
        if network.get("path"):
            return str(network["path"])
        try:
            state = self.tasks.state(self.namespace, record.id)
        except LinerError:
            state = None
        if state is None or state.status != TaskStatus.RUNNING or state.pid <= 0:
            raise NotFound(f"pod sandbox {sandbox_id} has no running network namespace")
        return f"/proc/{state.pid}/ns/net"
