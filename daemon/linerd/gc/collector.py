"""Mark and sweep over the metadata, then over the files the metadata no longer names.

Nodes are (namespace, type, id) with the lease-resource types: "content" (id = digest) and
"snapshots/<snapshotter>" (id = key). Roots: image targets, everything a live lease holds,
objects labelled `containerd.io/gc.root`, and containers (their snapshot and label refs).
Edges: `containerd.io/gc.ref.content[.<anything>]` and
`containerd.io/gc.ref.snapshot.<snapshotter>[/<anything>]` labels, plus each kind's own
references (a snapshot's parent).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

import structlog
from sqlalchemy import Connection, bindparam, delete, select

from linerd import faults
from linerd.content.store import ContentStore
from linerd.errdefs import InvalidArgument
from linerd.gc import labels as gclabels
from linerd.metadata.content import ContentRecords
from linerd.metadata.db import Database
from linerd.metadata.leases import EXPIRE_LABEL, parse_expire
from linerd.metadata.models import containers, content, images, lease_resources, leases

log = structlog.get_logger("linerd.gc")

Node = tuple[str, str, str]


@dataclass(slots=True)
class GcObject:
    labels: dict[str, str]
    refs: list[Node] = field(default_factory=list)


class Kind(Protocol):
    """One collectable type of record: loads its objects and removes the unreachable ones."""

    def objects(self, conn: Connection) -> dict[Node, GcObject]: ...

    def remove(self, conn: Connection, nodes: list[Node]) -> Cleanup | None:
        """Delete the records; return what to do on disk once the transaction committed."""


RootSource = Callable[[Connection], Iterable[Node]]
Cleanup = Callable[[], None]


def label_refs(namespace: str, labels: dict[str, str]) -> Iterable[Node]:
    for key, value in labels.items():
        if key == gclabels.CONTENT_REF or key.startswith(gclabels.CONTENT_REF + "."):
            yield (namespace, "content", value)
        elif key.startswith(gclabels.SNAPSHOT_REF):
            snapshotter = key[len(gclabels.SNAPSHOT_REF) :].split("/", 1)[0]
            if snapshotter:
                yield (namespace, f"snapshots/{snapshotter}", value)


class ContentKind:
    def __init__(self, records: ContentRecords | None = None) -> None:
        self._records = records

    def objects(self, conn: Connection) -> dict[Node, GcObject]:
        t = content.c
        return {
            (namespace, "content", digest): GcObject(labels=labels)
            for namespace, digest, labels in conn.execute(select(t.namespace, t.digest, t.labels))
        }

    def remove(self, conn: Connection, nodes: list[Node]) -> Cleanup | None:
        for namespace, _, digest in nodes:
            if self._records is not None:
                self._records.cache.drop((namespace, digest))
        if nodes:
            # One statement executed for every node (executemany).
            conn.execute(
                delete(content).where(
                    content.c.namespace == bindparam("b_namespace"),
                    content.c.digest == bindparam("b_digest"),
                ),
                [{"b_namespace": namespace, "b_digest": digest} for namespace, _, digest in nodes],
            )
        return None  # blob files go in the file sweep: another namespace may record them


def image_roots(conn: Connection) -> Iterable[Node]:
    for namespace, digest in conn.execute(select(images.c.namespace, images.c.digest)):
        yield (namespace, "content", digest)


def container_roots(conn: Connection) -> Iterable[Node]:
    """A container holds its snapshot and whatever its labels reference."""
    t = containers.c
    rows = conn.execute(select(t.namespace, t.snapshotter, t.snapshot_key, t.labels))
    for namespace, snapshotter, snapshot_key, labels in rows:
        if snapshotter and snapshot_key:
            yield (namespace, f"snapshots/{snapshotter}", snapshot_key)
        yield from label_refs(namespace, labels)


def lease_roots(conn: Connection) -> Iterable[Node]:
    t = lease_resources.c
    rows = conn.execute(select(t.namespace, t.type, t.resource_id))
    return [(namespace, type_, resource_id) for namespace, type_, resource_id in rows]


@dataclass(slots=True)
class Stats:
    leases: int = 0
    removed: dict[str, int] = field(default_factory=dict)
    files: int = 0
    seconds: float = 0.0


class Collector:
    def __init__(self, db: Database, content: ContentStore) -> None:
        self._db = db
        self._content = content
        self._kinds: dict[str, Kind] = {"content": ContentKind(content.records)}  # by _kind_name
        self._roots: list[RootSource] = [image_roots, container_roots, lease_roots]
        self._wake = asyncio.Event()
        self.interval = 3600.0
        self.delay = 0.05
        # Scheduled collections take at most this share of the time (containerd's scheduler
        # has a 2 % pause threshold, but collects only every 100 mutations): after one that
        # took t seconds the next waits t/ratio, at most `max_spacing`. A burst of deletes
        # (20 `ctr rm`, or `ctr run --rm` in a loop) then shares a collection instead of each
        # paying one while the next call waits for the database thread.
        self.pause_ratio = 0.01
        self.max_spacing = 1.0
        self._last_end = float("-inf")
        self._last_cost = 0.0
        self._observers: list[Callable[[str], None]] = []

    def register_kind(self, name: str, kind: Kind) -> None:
        self._kinds[name] = kind

    def observe(self, observer: Callable[[str], None]) -> None:
        """Call `observer("schedule")` on each `schedule()` and `observer("collect")` when a
        collection starts: what a caller asked of the collector, seen without racing it."""
        self._observers.append(observer)

    def schedule(self) -> None:
        """Ask for a collection soon (after a delete); cheap to call often."""
        for observer in self._observers:
            observer("schedule")
        self._wake.set()

    def _spacing(self) -> float:
        """Seconds to wait before a scheduled collection."""
        spacing = min(self._last_cost / self.pause_ratio, self.max_spacing)
        return max(self.delay, self._last_end + spacing - time.monotonic())

    async def run(self) -> None:
        """Background loop: collect when scheduled (after `delay` seconds, to batch deletes,
        and spaced by `pause_ratio`) or every `interval` seconds. They are read each round, so
        a reload applies."""
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.interval)
                await asyncio.sleep(self._spacing())
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.collect()
            except Exception:
                log.exception("garbage collection failed")

    async def collect(self) -> Stats:
        """One full collection. Holds the content store's gc lock, so no commit interleaves."""
        for observer in self._observers:
            observer("collect")
        async with self._content.gc_lock:
            started = time.monotonic()
            stats, recorded, cleanups = await self._db.run(self._sweep_records)
            stats.files = await asyncio.to_thread(self._sweep_files, recorded)
            for cleanup in cleanups:
                await asyncio.to_thread(cleanup)
        self._last_end = time.monotonic()
        stats.seconds = self._last_cost = self._last_end - started
        if stats.leases or stats.files or any(stats.removed.values()):
            log.info(
                "garbage collected",
                leases=stats.leases,
                files=stats.files,
                seconds=round(stats.seconds, 4),
                **stats.removed,
            )
        return stats

    def unreachable(self, conn: Connection) -> list[Node]:
        """What a collection would remove now (without expiring leases): a dry run."""
        objects, marked = self._mark(conn)
        return sorted(n for n in objects if n not in marked)

    def _mark(self, conn: Connection) -> tuple[dict[Node, GcObject], set[Node]]:
        objects: dict[Node, GcObject] = {}
        for kind in self._kinds.values():
            objects.update(kind.objects(conn))
        pending: list[Node] = [node for source in self._roots for node in source(conn)]
        pending.extend(node for node, obj in objects.items() if gclabels.ROOT in obj.labels)
        marked: set[Node] = set()
        while pending:
            node = pending.pop()
            if node in marked:
                continue
            marked.add(node)
            obj = objects.get(node)
            if obj is not None:
                pending.extend(label_refs(node[0], obj.labels))
                pending.extend(obj.refs)
        return objects, marked

    def _sweep_records(self, conn: Connection) -> tuple[Stats, set[str], list[Cleanup]]:
        stats = Stats()
        stats.leases = _expire_leases(conn)
        objects, marked = self._mark(conn)
        cleanups = []
        for name, kind in self._kinds.items():
            dead = [n for n in objects if n not in marked and _kind_name(n[1]) == name]
            if dead:
                if cleanup := kind.remove(conn, dead):
                    cleanups.append(cleanup)
                stats.removed[name] = len(dead)
        faults.point("gc-sweep")
        recorded = set(conn.scalars(select(content.c.digest).distinct()))
        return stats, recorded, cleanups

    def _sweep_files(self, recorded: set[str]) -> int:
        """Remove blob files that no namespace records."""
        removed = 0
        for digest in list(self._content.local.digests()):
            if digest not in recorded:
                self._content.local.delete(digest)
                removed += 1
        return removed


def _kind_name(node_type: str) -> str:
    """ "snapshots/overlayfs" -> "snapshots": one kind serves every snapshotter."""
    return node_type.split("/", 1)[0]


def _expire_leases(conn: Connection) -> int:
    now = datetime.now(UTC)
    expired = []
    for namespace, lease_id, labels in conn.execute(
        select(leases.c.namespace, leases.c.id, leases.c.labels)
    ):
        value = labels.get(EXPIRE_LABEL)
        if value is None:
            continue
        try:
            if parse_expire(value) <= now:
                expired.append({"b_namespace": namespace, "b_id": lease_id})
        except InvalidArgument:
            continue
    if expired:
        # Their resources go with them (ON DELETE CASCADE).
        conn.execute(
            delete(leases).where(
                leases.c.namespace == bindparam("b_namespace"), leases.c.id == bindparam("b_id")
            ),
            expired,
        )
    return len(expired)
