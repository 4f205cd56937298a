"""Container records: specs and runtime options stored verbatim, scoped by namespace."""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, bindparam, delete, exists, func, insert, select, update

from linerd import faults
from linerd.core import validate
from linerd.core.types import Container, Encoded
from linerd.errdefs import AlreadyExists, InvalidArgument, NotFound
from linerd.metadata.cache import RecordCache
from linerd.metadata.db import Database
from linerd.metadata.models import containers
from linerd.metadata.namespaces import ensure

# Update mask paths that may change; without a mask all of these are replaced.
_UPDATABLE = ("labels", "spec", "extensions", "image", "snapshotkey")


def check(container: Container) -> Container:
    validate.identifier(container.id, "container id")
    if not container.runtime:
        raise InvalidArgument(f"container {container.id!r}: a runtime name is required")
    if container.spec is None:
        raise InvalidArgument(f"container {container.id!r}: a spec is required")
    if container.snapshot_key and not container.snapshotter:
        raise InvalidArgument(f"container {container.id!r}: a snapshot key needs a snapshotter")
    validate.labels(container.labels)
    return container


def _encode_extensions(extensions: dict[str, Encoded]) -> dict[str, list[str]]:
    return {k: [v.type_url, base64.b64encode(v.value).decode()] for k, v in extensions.items()}


_KEY = (containers.c.namespace == bindparam("b_namespace")) & (containers.c.id == bindparam("b_id"))
# Built once: ctr run creates and looks up a container each time.
_GET = select(containers).where(_KEY)
_EXISTS = select(containers.c.id).where(_KEY)
_INSERT = insert(containers)
# Built once as well (the CRI saves a container's state at each start and stop, and removes
# it): building a statement and finding it in SQLAlchemy's compiled cache costs ~10 times
# running it. An update's values come with the parameters (its SET clause is their columns).
_UPDATE = update(containers).where(_KEY)
# What the deleted record referenced comes back with the delete (one statement).
_DELETE = (
    delete(containers)
    .where(_KEY)
    .returning(containers.c.labels, containers.c.snapshotter, containers.c.snapshot_key)
)


@dataclass(frozen=True, slots=True)
class Deleted:
    """What a deleted container record referenced (what GC roots it held)."""

    labels: dict[str, str]
    snapshotter: str
    snapshot_key: str


def _container(row: Mapping[str, Any]) -> Container:
    options = (
        Encoded(row["runtime_options_type"], row["runtime_options"] or b"")
        if row["runtime_options_type"] is not None
        else None
    )
    return Container(
        id=row["id"],
        runtime=row["runtime"],
        spec=Encoded(row["spec_type"], row["spec"]),
        runtime_options=options,
        image=row["image"],
        labels=dict(row["labels"]),
        snapshotter=row["snapshotter"],
        snapshot_key=row["snapshot_key"],
        sandbox=row["sandbox"],
        extensions={k: Encoded(t, base64.b64decode(v)) for k, (t, v) in row["extensions"].items()},
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _get(conn: Connection, namespace: str, container_id: str) -> dict[str, Any]:
    row = conn.execute(_GET, {"b_namespace": namespace, "b_id": container_id}).first()
    if row is None:
        raise NotFound(f"container {container_id!r} not found")
    return dict(row._mapping)


def _set_spec(row: dict[str, Any], spec: Encoded | None) -> None:
    if spec is None:
        raise InvalidArgument(f"container {row['id']!r}: a spec is required")
    row["spec_type"], row["spec"] = spec.type_url, spec.value


class ContainerStore:
    def __init__(self, db: Database) -> None:
        self._db = db
        # One `ctr run` looks its container up four times (Tasks/Create included).
        self._cache: RecordCache[tuple[str, str], Container] = RecordCache(Container.copy)
        # namespace -> count of writes, moved when a write begins and again once it committed
        # (on the database thread): a reader that saw the same generation before a list and
        # now may reuse that list (the CRI's relist; cri/records.py). The second move is for
        # the kept lists below, which show a write only after its commit.
        self._generations: dict[str, int] = {}
        # Every record of a namespace, by id in id order, once a List read it: a List then
        # answers on the caller's thread, never queued on the database thread behind writes
        # and GC (kubelet and monitors list all the time while pods come and go). Kept as the
        # record cache is: changed only on the database thread, by each committed write
        # (after_commit: commit order); a namespace's dict is replaced, never changed, so a
        # reader iterates a consistent one. No other writer of the table runs (cache.py).
        self._lists: dict[str, dict[str, Container]] = {}

    def generation(self, namespace: str) -> int:
        """Any thread: changes before any write to `namespace` commits, and after."""
        return self._generations.get(namespace, 0)

    def _written(self, namespace: str, container_id: str) -> None:
        """Database thread, inside the writing transaction."""
        self._cache.drop((namespace, container_id))
        self._generations[namespace] = self._generations.get(namespace, 0) + 1

    async def get(self, namespace: str, container_id: str) -> Container:
        key = (namespace, container_id)
        if (hit := self._cache.get(key)) is not None:
            return hit
        return await self._db.run(
            lambda c: self._cache.put(key, _container(_get(c, namespace, container_id)))
        )

    async def list(self, namespace: str, *, shared: bool = False) -> list[Container]:
        """Every record of the namespace, by id. `shared`: the cached records themselves,
        not copies, for a caller that only reads them (a List answer); never change one."""
        records = await self.records(namespace)
        return list(records.values()) if shared else [c.copy() for c in records.values()]

    async def records(self, namespace: str) -> Mapping[str, Container]:
        """Every record of the namespace by id, in id order: the kept list itself, for a
        caller that only reads it. It is never changed (a write replaces it), so the same
        object means nothing changed since; never change it or a record in it."""
        if (records := self._lists.get(namespace)) is not None:
            return records

        def list_(conn: Connection) -> dict[str, Container]:
            rows = conn.execute(
                select(containers)
                .where(containers.c.namespace == namespace)
                .order_by(containers.c.id)
            )
            found = {c.id: c for c in (_container(r._mapping) for r in rows)}
            self._lists[namespace] = found
            return found

        return await self._db.run(list_)

    def _listed(self, namespace: str, container_id: str, record: Container | None) -> None:
        """After a commit, on the database thread: the namespace's list gets the change,
        then its generation moves (in that order: see `generation`)."""
        try:
            self._relist(namespace, container_id, record)
        finally:
            self._generations[namespace] = self._generations.get(namespace, 0) + 1

    def _relist(self, namespace: str, container_id: str, record: Container | None) -> None:
        records = self._lists.get(namespace)
        if records is None:
            return
        changed = dict(records)
        if record is None:
            changed.pop(container_id, None)
        elif container_id in changed:
            changed[container_id] = record
        else:
            changed[container_id] = record
            # the id order of the query (ids are ASCII: SQLite's BINARY order is str order)
            changed = dict(sorted(changed.items()))
        self._lists[namespace] = changed

    async def create(self, namespace: str, container: Container) -> Container:
        return await self._db.run(self.creator(namespace, container))

    def creator(self, namespace: str, container: Container) -> Callable[[Connection], Container]:
        """The insert of `create` (the container checked now), for a caller's transaction
        (a snapshot prepared with its container: SnapshotStore.create_with)."""
        check(container)

        def create(conn: Connection) -> Container:
            self._written(namespace, container.id)
            ensure(conn, namespace)
            if conn.execute(_EXISTS, {"b_namespace": namespace, "b_id": container.id}).first():
                raise AlreadyExists(f"container {container.id!r} already exists")
            now = datetime.now(UTC)
            options = container.runtime_options
            row: dict[str, Any] = {
                "namespace": namespace,
                "id": container.id,
                "labels": dict(container.labels),
                "image": container.image,
                "runtime": container.runtime,
                "runtime_options_type": options.type_url if options else None,
                "runtime_options": options.value if options else None,
                "snapshotter": container.snapshotter,
                "snapshot_key": container.snapshot_key,
                "sandbox": container.sandbox,
                "extensions": _encode_extensions(container.extensions),
                "created_at": now,
                "updated_at": now,
            }
            _set_spec(row, container.spec)
            conn.execute(_INSERT, row)
            faults.point("container-create")
            created = _container(row)
            # ctr gets the container right after creating it (twice, Tasks/Create included).
            key = (namespace, container.id)

            def committed() -> None:
                self._cache.put(key, created)
                self._listed(namespace, container.id, created)

            self._db.after_commit(conn, committed)
            return created.copy()

        return create

    async def update(self, namespace: str, container: Container, paths: list[str]) -> Container:
        """Masks as containerd's: `labels[.<k>]`, `extensions[.<k>]`, `spec`, `image`,
        `snapshotkey`; no mask replaces all of them. Runtime and snapshotter never change."""
        for path in paths:
            head = path.split(".", 1)[0]
            if path not in _UPDATABLE and not (head in ("labels", "extensions") and "." in path):
                raise InvalidArgument(f"cannot update {path!r} field on container {container.id!r}")

        def update_(conn: Connection) -> Container:
            self._written(namespace, container.id)
            row = _get(conn, namespace, container.id)
            if not paths:
                if container.runtime and container.runtime != row["runtime"]:
                    raise InvalidArgument(f"container {row['id']!r}: the runtime cannot change")
                if container.snapshotter and container.snapshotter != row["snapshotter"]:
                    raise InvalidArgument(f"container {row['id']!r}: the snapshotter cannot change")
                row["labels"] = validate.labels(container.labels)
                _set_spec(row, container.spec)
                row["extensions"] = _encode_extensions(container.extensions)
                row["image"], row["snapshot_key"] = container.image, container.snapshot_key
            for path in paths:
                if path == "spec":
                    _set_spec(row, container.spec)
                elif path == "image":
                    row["image"] = container.image
                elif path == "snapshotkey":
                    row["snapshot_key"] = container.snapshot_key
            labels = validate.apply_label_mask(row["labels"], container.labels, paths)
            if labels is not None:
                row["labels"] = labels
            extensions = _apply_extension_mask(row["extensions"], container.extensions, paths)
            if extensions is not None:
                row["extensions"] = extensions
            row["updated_at"] = datetime.now(UTC)
            values = {k: v for k, v in row.items() if k not in ("namespace", "id")}
            conn.execute(_UPDATE, {**values, "b_namespace": namespace, "b_id": container.id})
            updated = _container(row)
            # The CRI looks a container up right after saving its state (status, remove).
            key = (namespace, container.id)

            def committed() -> None:
                self._cache.put(key, updated)
                self._listed(namespace, container.id, updated)

            self._db.after_commit(conn, committed)
            return updated.copy()

        return await self._db.run(update_)

    async def delete(
        self, namespace: str, container_id: str, after: Callable[[], None] | None = None
    ) -> None:
        if await self._db.run(self.deleter(namespace, container_id, after)) is None:
            raise NotFound(f"container {container_id!r} not found")

    def deleter(
        self, namespace: str, container_id: str, after: Callable[[], None] | None = None
    ) -> Callable[[Connection], Deleted | None]:
        """The delete of `delete`, for a caller's transaction (a container removed with its
        snapshot: SnapshotStore.remove_with); it returns what the record referenced, None
        when there was none. `after`: called on the database thread once a delete that
        found the record committed (the runtime's log of the container removed without a
        thread hop)."""

        def delete_(conn: Connection) -> Deleted | None:
            self._written(namespace, container_id)
            key = {"b_namespace": namespace, "b_id": container_id}
            row = conn.execute(_DELETE, key).first()
            if row is None:
                return None
            self._db.after_commit(conn, lambda: self._listed(namespace, container_id, None))
            if after is not None:
                self._db.after_commit(conn, after)
            return Deleted(dict(row.labels), row.snapshotter or "", row.snapshot_key or "")

        return delete_

    def count_sync(self) -> int:
        """How many container records there are, in all namespaces. Blocks."""
        return self._db.run_sync(
            lambda c: c.scalar(select(func.count()).select_from(containers)) or 0
        )

    @staticmethod
    def holds(conn: Connection, namespace: str) -> bool:
        return bool(conn.scalar(select(exists().where(containers.c.namespace == namespace))))


def _apply_extension_mask(
    current: dict[str, list[str]], new: dict[str, Encoded], paths: list[str]
) -> dict[str, list[str]] | None:
    encoded = _encode_extensions(new)
    result, touched = dict(current), False
    for path in paths:
        if path == "extensions":
            result, touched = dict(encoded), True
        elif path.startswith("extensions."):
            key = path[len("extensions.") :]
            if key in encoded:
                result[key] = encoded[key]
            else:
                result.pop(key, None)
            touched = True
    return result if touched else None
