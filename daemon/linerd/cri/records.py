"""The CRI's view of the container records of `k8s.io`: sandboxes and containers by kind,
looked up by id or unique id prefix (crictl passes what the user typed, as containerd's
truncindex allows), with their metadata saved back through the local Containers service.

kubelet lists every second what rarely changes. The records of `k8s.io` are kept as last
listed, with their metadata decoded, until the container store's generation of the namespace
moves (every create, update and delete, whoever makes it: the CRI, ctr, a restart's
recovery; metadata/containers.py); a record's decoding is kept while its extension's bytes
stay the same, and with it what the read calls serialize of it (`Entry.views`: a List's part
and a status per state), so a relist after one write decodes and serializes one record, not
every one. What a record's task is doing is never kept: callers ask the runtime, and pick
the bytes of the state it tells.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from liner_api.runtime.v1 import api_pb2 as cri
from linerd.core.types import Container
from linerd.cri import meta
from linerd.errdefs import InvalidArgument, NotFound

if TYPE_CHECKING:
    from linerd.local.containers import Containers
    from linerd.local.leases import Leases


@dataclass(frozen=True, slots=True)
class Entry:
    """A record with its CRI metadata decoded. Shared between calls: read it, never change
    it (copy the metadata with `dataclasses.replace` to write)."""

    record: Container
    meta: Any  # meta.SandboxMeta or meta.ContainerMeta
    # The request config's labels, for the Lists' label selectors.
    labels: dict[str, str]
    # What the read calls serialize of this decoding (per state), kept with it: shared by
    # every Entry of the same extension bytes. Nothing a client sees changes without the
    # bytes (the exit, the timestamps, the config) but the task's state, which is the key.
    views: dict[Any, bytes] = field(default_factory=dict)

    @property
    def config(self) -> Any:
        """The request config (cri.PodSandboxConfig or cri.ContainerConfig), decoded at each
        read from the metadata's bytes: read where a view is built (once per decoding and
        state), not per List. Not kept decoded: a decoded config holds an arena of its own,
        ~2.5 kB each, for what its metadata keeps in ~0.2-1 kB of bytes."""
        if isinstance(self.meta, meta.SandboxMeta):
            return cri.PodSandboxConfig.FromString(self.meta.config)
        return cri.ContainerConfig.FromString(self.meta.config)


def _extension_of(kind: str) -> str:
    return meta.SANDBOX_EXTENSION if kind == meta.KIND_SANDBOX else meta.CONTAINER_EXTENSION


class Records:
    def __init__(self, containers: Containers) -> None:
        self.containers = containers
        # (generation, kind -> entries in id order) of the last list, or None
        self._listed: tuple[int, dict[str, list[Entry]]] | None = None
        # record id -> (extension bytes, entry) of the last decoding
        self._decoded: dict[str, tuple[bytes, Entry]] = {}
        # record id -> (record, kind, entry or None if not the CRI's) of the last list
        self._last: dict[str, tuple[Container, str, Entry | None]] = {}

    def decode(self, record: Container) -> Entry:
        """`record` with its metadata decoded (kept while the bytes are equal).
        Internal (corrupt metadata) or KeyError (no extension of its kind)."""
        kind = meta.kind(record)
        raw = record.extensions[_extension_of(kind)].value
        hit = self._decoded.get(record.id)
        if hit is not None and hit[0] == raw:
            if hit[1].record is record:
                return hit[1]
            return Entry(record, hit[1].meta, hit[1].labels, hit[1].views)
        if kind == meta.KIND_SANDBOX:
            m: Any = meta.sandbox_meta(record)
            config: Any = cri.PodSandboxConfig.FromString(m.config)
        else:
            m = meta.container_meta(record)
            config = cri.ContainerConfig.FromString(m.config)
        entry = Entry(record, m, dict(config.labels))
        self._decoded[record.id] = (raw, entry)
        return entry

    async def entries(self, kind: str) -> list[Entry]:
        """The records of that kind with CRI metadata, decoded, in id order (shared: read
        only). A record someone made with ctr and labelled alike is not the CRI's."""
        store = self.containers.store
        generation = store.generation(meta.NAMESPACE)  # before the list: see the docstring
        listed = self._listed
        if listed is not None and listed[0] == generation:
            return listed[1].get(kind, [])
        by_kind: dict[str, list[Entry]] = {meta.KIND_SANDBOX: [], meta.KIND_CONTAINER: []}
        last = self._last
        now: dict[str, tuple[Container, str, Entry | None]] = {}
        # The store's own records (read only here, as entries are): a record not written
        # since the last list is the same object, and its entry (or its exclusion) is reused
        # without a look at it; only the records written since are decoded (one per write).
        for record in await self.containers.list(meta.NAMESPACE, shared=True):
            kept = last.get(record.id)
            if kept is not None and kept[0] is record:
                now[record.id] = kept
                if kept[2] is not None:
                    by_kind[kept[1]].append(kept[2])
                continue
            k = meta.kind(record)
            if k not in by_kind or _extension_of(k) not in record.extensions:
                now[record.id] = (record, k, None)
                continue
            entry = self.decode(record)
            now[record.id] = (record, k, entry)
            by_kind[k].append(entry)
        for gone in self._decoded.keys() - now.keys():
            del self._decoded[gone]
        self._last = now
        self._listed = (generation, by_kind)
        return by_kind.get(kind, [])

    async def list(self, kind: str) -> list[Container]:
        """The records of that kind with CRI metadata (copies: the caller may change them)."""
        return [e.record.copy() for e in await self.entries(kind)]

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
        found = [e.record for e in await self.entries(kind) if e.record.id.startswith(id_or_prefix)]
        if len(found) == 1:
            return found[0].copy()
        if len(found) > 1:
            raise InvalidArgument(f"{what} id prefix {id_or_prefix!r} is ambiguous")
        raise NotFound(f"{what} {id_or_prefix!r} not found")

    async def save_sandbox(self, record: Container, m: meta.SandboxMeta) -> Container:
        record = dataclasses.replace(
            record, extensions={**record.extensions, **meta.sandbox_extension(m)}
        )
        return await self.containers.update(
            meta.NAMESPACE, record, [f"extensions.{meta.SANDBOX_EXTENSION}"]
        )

    async def save_container(self, record: Container, m: meta.ContainerMeta) -> Container:
        record = dataclasses.replace(
            record, extensions={**record.extensions, **meta.container_extension(m)}
        )
        return await self.containers.update(
            meta.NAMESPACE, record, [f"extensions.{meta.CONTAINER_EXTENSION}"]
        )

    async def drop_leases(self, leases: Leases, prefix: str) -> None:
        """Delete the CRI's own leases of calls a crash interrupted (ids `<prefix>...`)."""
        for lease in await leases.list(meta.NAMESPACE):
            if lease.id.startswith(prefix):
                with contextlib.suppress(NotFound):
                    await leases.delete(meta.NAMESPACE, lease.id)
