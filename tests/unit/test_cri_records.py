"""The CRI's kept view of `k8s.io` (cri/records.py, cri/images.py): reused while the stores'
generation stays, and every write, whoever makes it, is seen by the next read."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from liner_api.runtime.v1 import api_pb2 as cri
from linerd.core.types import Container, Descriptor, Encoded, Image
from linerd.cri import meta
from linerd.cri.records import Records
from linerd.errdefs import AlreadyExists, NotFound
from linerd.local.containers import Containers
from linerd.metadata.containers import ContainerStore
from linerd.metadata.db import Database, sqlite_url
from linerd.metadata.images import ImageStore

pytestmark = pytest.mark.unit
T = TypeVar("T")
DIGEST = "sha256:" + "ab" * 32


class CountingDatabase(Database):
    """Counts transactions, to tell a kept list from a read."""

    transactions = 0

    def _transaction(self, fn):  # type: ignore[no-untyped-def]
        self.transactions += 1
        return super()._transaction(fn)


class _Quiet:
    """The events publisher and the collector, which these tests do not watch."""

    def publish(self, *_: Any) -> None:
        pass

    def schedule(self) -> None:
        pass


def _forget(_namespace: str, _id: str) -> None:
    pass


@pytest.fixture
def db(tmp_path: Path) -> Iterator[CountingDatabase]:
    database = CountingDatabase(sqlite_url(tmp_path))
    database.migrate()
    yield database
    database.close()


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro

    return asyncio.run(main())


def local(db: Database) -> Containers:
    quiet: Any = _Quiet()
    return Containers(ContainerStore(db), quiet, quiet, _forget)


def sandbox(sandbox_id: str, state: str = "ready") -> Container:
    m = meta.SandboxMeta(config=b"", name=f"n-{sandbox_id}", created_at=1, state=state)
    return Container(
        id=sandbox_id,
        runtime=meta.RUNTIME,
        spec=Encoded("spec", b"{}"),
        labels={meta.KIND_LABEL: meta.KIND_SANDBOX},
        extensions=meta.sandbox_extension(m),
    )


def states(entries: list[Any]) -> dict[str, str]:
    return {e.record.id: e.meta.state for e in entries}


def test_lists_are_kept_until_a_write_and_every_write_is_seen(db: CountingDatabase) -> None:
    containers = local(db)
    records = Records(containers)

    async def body() -> None:
        await containers.create(meta.NAMESPACE, sandbox("a"))
        assert states(await records.entries(meta.KIND_SANDBOX)) == {"a": "ready"}
        reads = db.transactions
        first = await records.entries(meta.KIND_SANDBOX)
        assert await records.entries(meta.KIND_CONTAINER) == []
        assert db.transactions == reads  # kept: no transaction

        # A CRI write (the metadata's state) is seen by the next list.
        record = await records.find(meta.KIND_SANDBOX, "a")
        m = records.decode(record).meta
        await records.save_sandbox(record, meta.SandboxMeta(**{**_fields(m), "state": "stopped"}))
        assert m.state == "ready"  # the kept decoding was not changed in place
        assert states(await records.entries(meta.KIND_SANDBOX)) == {"a": "stopped"}

        # Writes from outside the CRI (ctr): a label, a new record, a removal.
        other = await containers.create(meta.NAMESPACE, sandbox("b"))
        other.labels["x"] = "y"
        await containers.update(meta.NAMESPACE, other, ["labels.x"])
        listed = await records.entries(meta.KIND_SANDBOX)
        assert [e.record.labels.get("x") for e in listed] == [None, "y"]
        await containers.delete(meta.NAMESPACE, "a")
        assert states(await records.entries(meta.KIND_SANDBOX)) == {"b": "ready"}
        assert first[0].record.id == "a"  # what a caller already holds stays as it was

        # A failed write moves the generation too: a miss, never a stale answer.
        generation = containers.store.generation(meta.NAMESPACE)
        with pytest.raises(AlreadyExists):
            await containers.create(meta.NAMESPACE, sandbox("b"))
        assert containers.store.generation(meta.NAMESPACE) > generation
        assert states(await records.entries(meta.KIND_SANDBOX)) == {"b": "ready"}

    run(body())


def test_a_decoding_is_kept_while_the_metadata_bytes_stay(db: CountingDatabase) -> None:
    containers = local(db)
    records = Records(containers)

    async def body() -> None:
        created = await containers.create(meta.NAMESPACE, sandbox("a"))
        before = (await records.entries(meta.KIND_SANDBOX))[0]
        created.labels["x"] = "y"
        await containers.update(meta.NAMESPACE, created, ["labels.x"])
        after = (await records.entries(meta.KIND_SANDBOX))[0]
        # The label is new, the metadata the same bytes: the decoding is reused.
        assert after.record.labels["x"] == "y" and after.meta is before.meta
        changed = await records.save_sandbox(
            after.record, meta.SandboxMeta(**{**_fields(after.meta), "ip": "10.0.0.2"})
        )
        assert records.decode(changed).meta.ip == "10.0.0.2"
        assert (await records.entries(meta.KIND_SANDBOX))[0].meta.ip == "10.0.0.2"
        # Listed copies (`list`) may be changed by their caller without touching the kept.
        copy = (await records.list(meta.KIND_SANDBOX))[0]
        copy.labels["x"] = "changed"
        assert (await records.entries(meta.KIND_SANDBOX))[0].record.labels["x"] == "y"

    run(body())


def test_an_entry_keeps_its_config_as_bytes_and_its_labels(db: CountingDatabase) -> None:
    """A decoded request config holds an arena of its own (~2.5 kB): an entry keeps the
    metadata's bytes and the labels the Lists select on, and decodes the config when read."""
    containers = local(db)
    records = Records(containers)
    config = cri.PodSandboxConfig(
        metadata=cri.PodSandboxMetadata(name="p", namespace="n", uid="u"),
        labels={"app": "x"},
        annotations={"note": "y"},
    )
    m = meta.SandboxMeta(config=config.SerializeToString(), name="n-a", created_at=1)
    record = Container(
        id="a",
        runtime=meta.RUNTIME,
        spec=Encoded("spec", b"{}"),
        labels={meta.KIND_LABEL: meta.KIND_SANDBOX},
        extensions=meta.sandbox_extension(m),
    )

    async def body() -> None:
        await containers.create(meta.NAMESPACE, record)
        entry = (await records.entries(meta.KIND_SANDBOX))[0]
        assert "config" not in type(entry).__slots__
        assert entry.labels == {"app": "x"}
        assert entry.config == config and entry.config is not entry.config
        assert isinstance(entry.config, cri.PodSandboxConfig)

    run(body())


def test_a_restart_starts_from_the_database(tmp_path: Path) -> None:
    async def body() -> None:
        db = Database(sqlite_url(tmp_path))
        db.migrate()
        containers = local(db)
        await containers.create(meta.NAMESPACE, sandbox("a"))
        assert states(await Records(containers).entries(meta.KIND_SANDBOX)) == {"a": "ready"}
        db.close()
        again = Database(sqlite_url(tmp_path))  # a new daemon: nothing kept but the rows
        records = Records(local(again))
        await local(again).create(meta.NAMESPACE, sandbox("b"))
        try:
            assert states(await records.entries(meta.KIND_SANDBOX)) == {
                "a": "ready",
                "b": "ready",
            }
        finally:
            again.close()

    run(body())


def test_image_store_generation_moves_on_every_write(db: CountingDatabase) -> None:
    store = ImageStore(db)
    target = Descriptor("application/vnd.oci.image.manifest.v1+json", DIGEST, 10)

    async def body() -> None:
        seen = [store.generation("k8s.io")]
        await store.create("k8s.io", Image(name="a", target=target))
        seen.append(store.generation("k8s.io"))
        await store.update("k8s.io", Image(name="a", target=target, labels={"k": "v"}), ["labels"])
        seen.append(store.generation("k8s.io"))
        await store.delete("k8s.io", "a")
        seen.append(store.generation("k8s.io"))
        with pytest.raises(NotFound):
            await store.delete("k8s.io", "a")
        assert store.generation("default") == 0  # per namespace
        assert seen == sorted(set(seen)) and len(seen) == 4

    run(body())


def _fields(m: Any) -> dict[str, Any]:
    return {f: getattr(m, f) for f in m.__slots__}
