"""The CRI's view of the container records of `k8s.io`: sandboxes and containers by kind,
looked up by id or unique id prefix (crictl passes what the user typed, as containerd's
truncindex allows), with their metadata saved back through the local Containers service."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from linerd.core.types import Container
from linerd.cri import meta
from linerd.errdefs import InvalidArgument, NotFound

if TYPE_CHECKING:
    from linerd.local.containers import Containers
    from linerd.local.leases import Leases


class Records:
    def __init__(self, containers: Containers) -> None:
        self.containers = containers

    async def list(self, kind: str) -> list[Container]:
        """The records of that kind with CRI metadata (a record someone made with ctr and
        labelled alike is not the CRI's)."""
        ext = meta.SANDBOX_EXTENSION if kind == meta.KIND_SANDBOX else meta.CONTAINER_EXTENSION
        return [
            r
            for r in await self.containers.list(meta.NAMESPACE)
            if meta.kind(r) == kind and ext in r.extensions
        ]

    async def find(self, kind: str, id_or_prefix: str) -> Container:
        what = "sandbox" if kind == meta.KIND_SANDBOX else "container"
        if not id_or_prefix:
            raise InvalidArgument(f"{what} id must not be empty")
        try:
            record = await self.containers.get(meta.NAMESPACE, id_or_prefix)
        except (NotFound, InvalidArgument):
            record = None
        ext = meta.SANDBOX_EXTENSION if kind == meta.KIND_SANDBOX else meta.CONTAINER_EXTENSION
        if record is not None and meta.kind(record) == kind and ext in record.extensions:
            return record
        found = [r for r in await self.list(kind) if r.id.startswith(id_or_prefix)]
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise InvalidArgument(f"{what} id prefix {id_or_prefix!r} is ambiguous")
        raise NotFound(f"{what} {id_or_prefix!r} not found")

    async def save_sandbox(self, record: Container, m: meta.SandboxMeta) -> Container:
        record.extensions = {**record.extensions, **meta.sandbox_extension(m)}
        return await self.containers.update(
            meta.NAMESPACE, record, [f"extensions.{meta.SANDBOX_EXTENSION}"]
        )

    async def save_container(self, record: Container, m: meta.ContainerMeta) -> Container:
        record.extensions = {**record.extensions, **meta.container_extension(m)}
        return await self.containers.update(
            meta.NAMESPACE, record, [f"extensions.{meta.CONTAINER_EXTENSION}"]
        )

    async def drop_leases(self, leases: Leases, prefix: str) -> None:
        """Delete the CRI's own leases of calls a crash interrupted (ids `<prefix>...`)."""
        for lease in await leases.list(meta.NAMESPACE):
            if lease.id.startswith(prefix):
                with contextlib.suppress(NotFound):
                    await leases.delete(meta.NAMESPACE, lease.id)
