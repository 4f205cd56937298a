"""One snapshotter's snapshots: records in SQL (per namespace), directories on disk.

Crash safety: a new snapshot's directory is built under a temporary name and renamed to its
id inside the transaction that records it; removal deletes the record first and the
directory after. `cleanup` removes what a crash left: directories no record names.

A committed snapshot's disk usage is measured after Commit returns, in the background: walking
a large layer took ~60 ms of each unpack's critical path (containerd walks it inside Commit).
Until then the record says UNMEASURED, and Usage measures it on demand; start-up measures what a
crash left unmeasured.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import secrets
import shutil
from collections.abc import Callable, Coroutine, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import structlog
from sqlalchemy import Connection, bindparam, case, delete, exists, func, insert, select, update

from linerd import faults
from linerd.core import validate
from linerd.core.types import LeaseResource, Mount, SnapshotInfo, SnapshotKind, Usage
from linerd.errdefs import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from linerd.gc.collector import Cleanup, GcObject, Node
from linerd.gc.labels import has_gc_refs
from linerd.metadata.cache import RecordCache
from linerd.metadata.db import Database
from linerd.metadata.leases import add_resource_in
from linerd.metadata.models import snapshots
from linerd.metadata.namespaces import ensure
from linerd.snapshots.backends import Backend
from linerd.snapshots.usage import disk_usage
from linerd.topdir import mark_top_directory

log = structlog.get_logger("linerd.snapshots")

T = TypeVar("T")

UNMEASURED = -1  # size and inodes of a committed snapshot whose usage is not measured yet

# Built once: every Prepare, Commit and Mounts looks snapshots up by key.
_GET = select(snapshots).where(
    snapshots.c.snapshotter == bindparam("b_snapshotter"),
    snapshots.c.namespace == bindparam("b_namespace"),
    snapshots.c.key == bindparam("b_key"),
)
_INSERT = insert(snapshots)
_BY_ID = snapshots.c.id == bindparam("b_id")
# Built once too: a statement built per call costs ~100 us to build and ~150 us more to
# find in SQLAlchemy's compiled cache (its cache key), ~10 times what running it costs.
_DELETE = delete(snapshots).where(_BY_ID)
# The values come with the parameters (the SET clause is the parameters' columns).
_UPDATE = update(snapshots).where(_BY_ID)
_MEASURED = update(snapshots).where(_BY_ID, snapshots.c.size == UNMEASURED)
_HAS_CHILDREN = select(
    exists().where(
        snapshots.c.snapshotter == bindparam("b_snapshotter"),
        snapshots.c.namespace == bindparam("b_namespace"),
        snapshots.c.parent == bindparam("b_key"),
    )
)


def _info(row: Mapping[str, Any]) -> SnapshotInfo:
    return SnapshotInfo(
        name=row["key"],
        kind=SnapshotKind(row["kind"]),
        parent=row["parent"] or "",
        labels=dict(row["labels"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _copy_info(info: SnapshotInfo) -> SnapshotInfo:
    return dataclasses.replace(info, labels=dict(info.labels))


def _row_of(conn: Connection, snapshotter: str, namespace: str, key: str) -> dict[str, Any] | None:
    params = {"b_snapshotter": snapshotter, "b_namespace": namespace, "b_key": key}
    row = conn.execute(_GET, params).first()
    return None if row is None else dict(row._mapping)


class SnapshotStore:
    def __init__(self, db: Database, backend: Backend, root: Path) -> None:
        self.name = backend.name
        self.backend = backend
        self.root = root
        self._db = db
        self._building: set[str] = set()
        self._background: set[asyncio.Future[None]] = set()
        # Commits inside `measuring_after` blocks: measured once the last block ends.
        self._measure_holds = 0
        self._held: list[int] = []
        # Mounts of active and view snapshots, by (namespace, key): they never change while
        # the snapshot lives (its parents are committed). Filled and dropped only on the
        # database thread, inside the transactions that read or end the snapshot.
        self._mounts_cache: dict[tuple[str, str], list[Mount]] = {}
        # Stat answers (ctr stats the image's top snapshot before every run), under the
        # same rules: filled by reads, dropped by the transactions that change the row.
        self._infos: RecordCache[tuple[str, str], SnapshotInfo] = RecordCache(_copy_info)
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        mark_top_directory(root)  # each snapshot in a block group of its own choosing

    # -- helpers that run inside a transaction ----------------------------------------------

    def _row(self, conn: Connection, namespace: str, key: str) -> dict[str, Any] | None:
        return _row_of(conn, self.name, namespace, key)

    def _get(self, conn: Connection, namespace: str, key: str) -> dict[str, Any]:
        row = self._row(conn, namespace, key)
        if row is None:
            raise NotFound(f"snapshot {key!r} does not exist")
        return row

    def _chain(self, conn: Connection, namespace: str, parent: str | None) -> list[Path]:
        """Directories of `parent` and its ancestors, top first."""
        chain = []
        while parent:
            row = self._get(conn, namespace, parent)
            chain.append(self.root / str(row["id"]))
            parent = row["parent"]
        return chain

    def _mounts(
        self, conn: Connection, row: Mapping[str, Any], *, cache: bool = True
    ) -> list[Mount]:
        """`cache`: only from a read of committed state (not in the transaction creating the
        snapshot, which may still fail)."""
        kind = SnapshotKind(row["kind"])
        if kind is SnapshotKind.COMMITTED:
            raise FailedPrecondition(f"snapshot {row['key']!r} is committed: it has no mounts")
        parents = self._chain(conn, row["namespace"], row["parent"])
        mounts = self.backend.mounts(self.root / str(row["id"]), kind, parents)
        if cache:
            self._mounts_cache[(row["namespace"], row["key"])] = mounts
        return list(mounts)

    def _cache_mounts(self, namespace: str, key: str, mounts: list[Mount]) -> None:
        self._mounts_cache[(namespace, key)] = mounts

    def forget(self, namespace: str, key: str) -> None:
        """The snapshot is ending (commit, remove): drop what is cached of it. Call inside
        the transaction that ends it."""
        self._mounts_cache.pop((namespace, key), None)
        self._infos.drop((namespace, key))

    # -- API ----------------------------------------------------------------------------------

    async def create(
        self,
        namespace: str,
        key: str,
        parent: str,
        labels: dict[str, str],
        kind: SnapshotKind,
        lease: str | None,
    ) -> list[Mount]:
        """Prepare (ACTIVE) or View (VIEW) `key` on top of committed `parent` ("" = none)."""
        mounts, _ = await self.create_with(namespace, key, parent, labels, kind, lease, None)
        return mounts

    async def create_with(
        self,
        namespace: str,
        key: str,
        parent: str,
        labels: dict[str, str],
        kind: SnapshotKind,
        lease: str | None,
        then: Callable[[Connection], T] | None,
    ) -> tuple[list[Mount], T | None]:
        """`create`, and `then(conn)` in the same transaction once the snapshot is recorded:
        a record that holds the new snapshot (a container's) is written with it, so nothing
        needs a lease between the two (GC sees both or neither; a crash keeps both or
        neither) and it costs one database round trip."""
        if not key:
            raise InvalidArgument("snapshot key must not be empty")
        labels = validate.labels(labels)

        def check(conn: Connection) -> list[Path]:
            if self._row(conn, namespace, key) is not None:
                raise AlreadyExists(f"snapshot {key!r} already exists")
            if parent:
                row = self._get(conn, namespace, parent)
                if row["kind"] != SnapshotKind.COMMITTED.value:
                    raise InvalidArgument(f"parent {parent!r} is not a committed snapshot")
            return self._chain(conn, namespace, parent)

        # A cheap populate runs inside the one transaction (a run --rm prepares a snapshot:
        # one database round trip instead of two and a thread hop); a copy runs before it.
        cheap = self.backend.cheap_populate
        parents = [] if cheap else await self._db.run(check)
        tmp = self.root / f"tmp-{secrets.token_hex(8)}"
        self._building.add(tmp.name)
        try:
            if not cheap:
                await asyncio.to_thread(self._populate, tmp, kind, parents)

            def record(conn: Connection) -> tuple[list[Mount], T | None]:
                chain = check(conn)  # again, after a copy: the world may have changed
                if cheap:
                    self._populate(tmp, kind, chain)
                ensure(conn, namespace)
                if lease:
                    add_resource_in(
                        conn,
                        namespace,
                        lease,
                        LeaseResource(id=key, type=f"snapshots/{self.name}"),
                    )
                now = datetime.now(UTC)
                row: dict[str, Any] = {
                    "snapshotter": self.name,
                    "namespace": namespace,
                    "key": key,
                    "parent": parent or None,
                    "kind": kind.value,
                    "labels": labels,
                    "size": 0,
                    "inodes": 0,
                    "created_at": now,
                    "updated_at": now,
                }
                inserted = conn.execute(_INSERT, row).inserted_primary_key
                assert inserted is not None  # a single-row insert
                row["id"] = inserted[0]
                # Before the rename: a failing `then` leaves only the tmp directory (removed
                # below), never a directory named by an id the rollback unrecorded.
                held = then(conn) if then is not None else None
                tmp.rename(self.root / str(row["id"]))
                faults.point("snapshot-prepare")
                mounts = self._mounts(conn, row, cache=False)
                # Cached once the row is committed: ctr asks for these mounts again right
                # away (Snapshots/Mounts before Tasks/Create), a database round trip each.
                cached = list(mounts)
                Database.after_commit(conn, lambda: self._cache_mounts(namespace, key, cached))
                return mounts, held

            return await self._db.run(record)
        finally:
            self._building.discard(tmp.name)
            if tmp.exists():
                await asyncio.to_thread(shutil.rmtree, tmp, True)

    def _populate(self, tmp: Path, kind: SnapshotKind, parents: list[Path]) -> None:
        tmp.mkdir(mode=0o700)
        self.backend.populate(tmp, kind, parents)

    async def mounts(self, namespace: str, key: str) -> list[Mount]:
        cached = self._mounts_cache.get((namespace, key))
        if cached is not None:
            return list(cached)
        return await self._db.run(lambda c: self._mounts(c, self._get(c, namespace, key)))

    async def commit(
        self, namespace: str, name: str, key: str, labels: dict[str, str], lease: str | None
    ) -> None:
        if not name:
            raise InvalidArgument("commit name must not be empty")
        labels = validate.labels(labels)

        def commit(conn: Connection) -> int:
            row = self._get(conn, namespace, key)
            if row["kind"] != SnapshotKind.ACTIVE.value:
                raise FailedPrecondition(f"snapshot {key!r} is not active: cannot commit it")
            if self._row(conn, namespace, name) is not None:
                raise AlreadyExists(f"snapshot {name!r} already exists")
            if lease:
                add_resource_in(
                    conn, namespace, lease, LeaseResource(id=name, type=f"snapshots/{self.name}")
                )
            self.forget(namespace, key)
            conn.execute(
                _UPDATE,
                {
                    "b_id": row["id"],
                    "key": name,
                    "kind": SnapshotKind.COMMITTED.value,
                    "labels": {**row["labels"], **labels},
                    "size": UNMEASURED,
                    "inodes": UNMEASURED,
                    "updated_at": datetime.now(UTC),
                },
            )
            faults.point("snapshot-commit")
            return int(row["id"])

        snapshot_id = await self._db.run(commit)
        if self._measure_holds:
            self._held.append(snapshot_id)
        else:
            self._in_background(self._measure(snapshot_id))
        # The work dir of an overlay upper is scratch space; a committed layer needs none.
        await asyncio.to_thread(shutil.rmtree, self.root / str(snapshot_id) / "work", True)

    @contextlib.contextmanager
    def measuring_after(self) -> Iterator[None]:
        """Snapshots committed inside the block are measured when it ends (when the last of
        several open ones ends). An image unpack's walk of a committed layer (thousands of
        entries, much of it on the daemon's GIL) ran beside the moves and commits of the
        layers above it, its pull's last steps. Until measured a snapshot is UNMEASURED as
        after any commit: Usage measures it on demand, a start-up after a crash in the
        background."""
        self._measure_holds += 1
        try:
            yield
        finally:
            self._measure_holds -= 1
            if not self._measure_holds:
                held, self._held = self._held, []
                for snapshot_id in held:
                    self._in_background(self._measure(snapshot_id))

    async def _measure(self, snapshot_id: int) -> Usage:
        """Measure a committed snapshot's usage and record it."""
        usage = await asyncio.to_thread(disk_usage, self.root / str(snapshot_id) / "fs")

        def record(conn: Connection) -> None:
            # Ids are never reused (AUTOINCREMENT): a snapshot removed meanwhile matches none.
            conn.execute(
                _MEASURED, {"b_id": snapshot_id, "size": usage.size, "inodes": usage.inodes}
            )

        await self._db.run(record)
        return usage

    async def remove(self, namespace: str, key: str) -> None:
        _, removed, _ = await self.remove_with(namespace, key, None)
        if not removed:
            raise NotFound(f"snapshot {key!r} does not exist")

    async def remove_with(
        self, namespace: str, key: str, first: Callable[[Connection], T] | None
    ) -> tuple[T | None, bool, bool]:
        """`first(conn)` (the delete of a record that held the snapshot: a container's),
        then the snapshot's removal, in one transaction; (what `first` returned, whether
        the snapshot existed and is removed, whether its removal may have left garbage). A
        missing snapshot is no error here.

        No garbage can be left when the snapshot referenced nothing by label and its parent
        (if any) still has another child: whether that child is reachable or not, the
        parent's reachability did not change (an unreachable child is garbage already, and
        whatever made it so scheduled a collection, which takes the parent too)."""
        moved: list[Path] = []

        def remove(conn: Connection) -> tuple[T | None, bool, bool]:
            held = first(conn) if first is not None else None
            row = self._row(conn, namespace, key)
            if row is None:
                return held, False, False
            # Only a committed snapshot can be a parent (create checks it).
            if row["kind"] == SnapshotKind.COMMITTED.value and self._has_children(
                conn, namespace, key
            ):
                raise FailedPrecondition(f"cannot remove snapshot {key!r}: it has children")
            self.forget(namespace, key)
            conn.execute(_DELETE, {"b_id": row["id"]})
            snapshot_id = int(row["id"])
            parent = row["parent"]
            orphans = has_gc_refs(row["labels"]) or (
                bool(parent) and not self._has_children(conn, namespace, parent)
            )
            # Moved aside once committed, still on the database thread (no thread hop of its
            # own); its contents go in the background. A crash leaves an rm- directory no
            # record names, which the start-up cleanup removes.
            Database.after_commit(conn, lambda: moved.extend(self._move_aside(snapshot_id)))
            return held, True, orphans

        result = await self._db.run(remove)
        for doomed in moved:
            self._discard(doomed)
        return result

    def _move_aside(self, snapshot_id: int) -> list[Path]:
        # A unique name, whatever an earlier removal (still running, or cut by a crash) left.
        doomed = self.root / f"rm-{snapshot_id}-{secrets.token_hex(4)}"
        try:
            (self.root / str(snapshot_id)).rename(doomed)
        except FileNotFoundError:
            return []
        return [doomed]

    def _discard(self, doomed: Path) -> None:
        self._in_background(asyncio.to_thread(shutil.rmtree, doomed, True))

    def _in_background(self, work: Coroutine[Any, Any, object]) -> None:
        task = asyncio.get_running_loop().create_task(self._quietly(work))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    @staticmethod
    async def _quietly(work: Coroutine[Any, Any, object]) -> None:
        try:
            await work
        except Exception as e:  # left for start-up cleanup, or to measure on demand
            log.warning("background snapshot work failed", error=str(e))

    async def settle(self) -> None:
        """Until the background removals and measurements started so far are done."""
        if self._background:
            await asyncio.gather(*self._background)

    def _has_children(self, conn: Connection, namespace: str, key: str) -> bool:
        params = {"b_snapshotter": self.name, "b_namespace": namespace, "b_key": key}
        return bool(conn.scalar(_HAS_CHILDREN, params))

    def remove_dirs(self, ids: list[int]) -> None:
        for snapshot_id in ids:
            directory = self.root / str(snapshot_id)
            if directory.exists():
                doomed = self.root / f"rm-{snapshot_id}"
                directory.rename(doomed)
                shutil.rmtree(doomed, ignore_errors=True)

    def known(self, namespace: str, key: str) -> bool:
        """Whether `key` is in the stat cache: it existed at its last read or write (no
        query; False says nothing)."""
        return self._infos.get((namespace, key)) is not None

    async def stat(self, namespace: str, key: str) -> SnapshotInfo:
        cached = self._infos.get((namespace, key))
        if cached is not None:
            return cached
        return await self._db.run(
            lambda c: self._infos.put((namespace, key), _info(self._get(c, namespace, key)))
        )

    async def update(
        self, namespace: str, key: str, labels: dict[str, str], paths: list[str]
    ) -> SnapshotInfo:
        for path in paths:
            if path != "labels" and not path.startswith("labels."):
                raise InvalidArgument(f"cannot update {path!r} field on snapshot {key!r}")

        def update_(conn: Connection) -> SnapshotInfo:
            row = self._get(conn, namespace, key)
            masked = validate.apply_label_mask(row["labels"], labels, paths)
            row["labels"] = masked if masked is not None else validate.labels(labels)
            row["updated_at"] = datetime.now(UTC)
            self._infos.drop((namespace, key))
            conn.execute(
                _UPDATE,
                {"b_id": row["id"], "labels": row["labels"], "updated_at": row["updated_at"]},
            )
            return _info(row)

        return await self._db.run(update_)

    async def list(self, namespace: str) -> list[SnapshotInfo]:
        def list_(conn: Connection) -> list[SnapshotInfo]:
            rows = conn.execute(
                select(snapshots)
                .where(snapshots.c.snapshotter == self.name, snapshots.c.namespace == namespace)
                .order_by(snapshots.c.id)
            )
            return [_info(r._mapping) for r in rows]

        return await self._db.run(list_)

    async def usage(self, namespace: str, key: str) -> Usage:
        def get(conn: Connection) -> tuple[str, int, Usage]:
            row = self._get(conn, namespace, key)
            return row["kind"], row["id"], Usage(row["size"], row["inodes"])

        kind, snapshot_id, usage = await self._db.run(get)
        if kind != SnapshotKind.COMMITTED.value:
            return await asyncio.to_thread(disk_usage, self.root / str(snapshot_id) / "fs")
        if usage.size == UNMEASURED:
            return await self._measure(snapshot_id)
        return usage

    async def measure_unmeasured(self) -> None:
        """In the background, measure the committed snapshots a crash left unmeasured."""
        ids = await self._db.run(
            lambda c: list(
                c.scalars(
                    select(snapshots.c.id).where(
                        snapshots.c.snapshotter == self.name, snapshots.c.size == UNMEASURED
                    )
                )
            )
        )
        for snapshot_id in ids:
            self._in_background(self._measure(int(snapshot_id)))

    async def cleanup(self) -> list[str]:
        """Remove directories that no record names (left by a crash); returns their names."""
        ids: set[str] = set(
            await self._db.run(
                lambda c: [
                    str(i)
                    for i in c.scalars(
                        select(snapshots.c.id).where(snapshots.c.snapshotter == self.name)
                    )
                ]
            )
        )
        return await asyncio.to_thread(self._remove_orphans, ids)

    def _remove_orphans(self, ids: set[str]) -> list[str]:
        removed = []
        for entry in self.root.iterdir():
            if entry.name in ids or entry.name in self._building:
                continue
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry.name)
        return removed

    def totals_sync(self) -> tuple[int, int]:
        """(bytes used by committed snapshots, number of snapshots), for metrics. Blocks."""

        def totals(conn: Connection) -> tuple[int, int]:
            used, count = conn.execute(
                select(
                    func.coalesce(func.sum(case((snapshots.c.size > 0, snapshots.c.size))), 0),
                    func.count(),
                ).where(snapshots.c.snapshotter == self.name)
            ).one()
            return int(used), int(count)

        return self._db.run_sync(totals)

    def usage_totals_sync(self) -> tuple[int, int]:
        """(bytes, inodes) of every measured snapshot, for the CRI's ImageFsInfo. Blocks."""

        def totals(conn: Connection) -> tuple[int, int]:
            used, inodes = conn.execute(
                select(
                    func.coalesce(func.sum(case((snapshots.c.size > 0, snapshots.c.size))), 0),
                    func.coalesce(func.sum(case((snapshots.c.inodes > 0, snapshots.c.inodes))), 0),
                ).where(snapshots.c.snapshotter == self.name)
            ).one()
            return int(used), int(inodes)

        return self._db.run_sync(totals)

    def holds(self) -> Callable[[Connection, str], bool]:
        """For the namespace store: does a namespace have snapshots here?"""

        def check(conn: Connection, namespace: str) -> bool:
            return bool(
                conn.scalar(
                    select(
                        exists().where(
                            snapshots.c.snapshotter == self.name, snapshots.c.namespace == namespace
                        )
                    )
                )
            )

        return check


class SnapshotsCollectable:
    """The garbage collector's view of every snapshotter's records."""

    def __init__(self, stores: dict[str, SnapshotStore]) -> None:
        self._stores = stores

    def objects(self, conn: Connection) -> dict[Node, GcObject]:
        found: dict[Node, GcObject] = {}
        t = snapshots.c
        for row in conn.execute(select(t.snapshotter, t.namespace, t.key, t.parent, t.labels)):
            node_type = f"snapshots/{row.snapshotter}"
            refs = [(row.namespace, node_type, row.parent)] if row.parent else []
            found[(row.namespace, node_type, row.key)] = GcObject(labels=row.labels, refs=refs)
        return found

    def remove(self, conn: Connection, nodes: list[Node]) -> Cleanup | None:
        doomed: dict[str, list[int]] = {}
        for namespace, node_type, key in nodes:
            snapshotter = node_type.split("/", 1)[1]
            row = _row_of(conn, snapshotter, namespace, key)
            if row is not None:
                if store := self._stores.get(snapshotter):
                    store.forget(namespace, key)
                conn.execute(_DELETE, {"b_id": row["id"]})
                doomed.setdefault(snapshotter, []).append(row["id"])

        def cleanup() -> None:
            for snapshotter, ids in doomed.items():
                if store := self._stores.get(snapshotter):
                    store.remove_dirs(ids)

        return cleanup
