from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text

from linerd.core.types import (
    Container,
    ContentInfo,
    Descriptor,
    Encoded,
    Image,
    Lease,
    LeaseResource,
    Namespace,
    SnapshotInfo,
    SnapshotKind,
)
from linerd.metadata import migrations
from linerd.metadata.containers import ContainerStore
from linerd.metadata.content import ContentRecords
from linerd.metadata.db import Database, sqlite_url
from linerd.metadata.images import ImageStore
from linerd.metadata.leases import LeaseStore
from linerd.metadata.models import metadata
from linerd.metadata.namespaces import NamespaceStore
from linerd.snapshots.backends import NativeBackend
from linerd.snapshots.store import SnapshotStore

pytestmark = pytest.mark.unit


def test_migrations_create_what_the_models_describe(tmp_path: Path) -> None:
    db = Database(sqlite_url(tmp_path))
    assert db.migrate() == migrations.MIGRATIONS[-1][0]
    inspector = inspect(db.engine)
    for table in metadata.sorted_tables:
        columns = {c["name"]: c for c in inspector.get_columns(table.name)}
        assert set(columns) == {c.name for c in table.columns}, table.name
        primary = set(inspector.get_pk_constraint(table.name)["constrained_columns"])
        assert primary == {c.name for c in table.primary_key.columns}, table.name
        for column in table.columns:
            # SQLite lets a non-integer primary key hold NULL: its NOT NULL is ours to keep.
            if not column.primary_key:
                assert columns[column.name]["nullable"] == column.nullable, column
    db.close()


def test_migrate_is_idempotent_and_wal(tmp_path: Path) -> None:
    db = Database(sqlite_url(tmp_path))
    first = db.migrate()
    assert db.migrate() == first
    with db.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        # SQLite's page cache capped at 256 KiB (negative: KiB, not pages).
        assert conn.execute(text("PRAGMA cache_size")).scalar() == -256
    db.close()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    engine = create_engine(sqlite_url(tmp_path))
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE schema_version (version INTEGER NOT NULL)"))
        conn.execute(text("INSERT INTO schema_version VALUES (999)"))
    engine.dispose()
    db = Database(sqlite_url(tmp_path))
    with pytest.raises(RuntimeError, match="newer than this linerd"):
        db.migrate()
    db.close()


def test_server_uuid_is_stable(tmp_path: Path) -> None:
    db = Database(sqlite_url(tmp_path))
    db.migrate()
    first = db.server_uuid()
    db.close()
    db = Database(sqlite_url(tmp_path))
    assert db.server_uuid() == first
    db.close()


def test_the_daemon_does_not_import_the_orm() -> None:
    """The metadata layer is SQLAlchemy Core: `sqlalchemy.orm` costs ~6 MB of RSS and
    milliseconds per write transaction (docs/PERFORMANCE.md). A fresh interpreter, since this
    one may have imported it for other tests."""
    code = (
        "import sys, linerd.main, linerd.server, linerd.fsck\n"
        "print('sqlalchemy' in sys.modules, 'sqlalchemy.orm' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.split() == ["True", "False"]


# Rows as the ORM models stored them (labels as json.dumps text, times as UTC microseconds):
# databases written before the move to SQLAlchemy Core must read back the same.
T1 = 1_700_000_000_123_456
WHEN = datetime(2023, 11, 14, 22, 13, 20, 123456, tzinfo=UTC)
DIGEST = "sha256:" + "ab" * 32
STORED = [
    ("namespaces", ("n", '{"a": "\\u00fc"}', T1, T1)),
    ("leases", ("n", "l", '{"x": "y"}', T1)),
    ("lease_resources", ("n", "l", "content", DIGEST)),
    ("content", ("n", DIGEST, 7, '{"k": "v"}', T1, T1)),
    ("images", ("n", "img", "mt", DIGEST, 7, '{"an": "1"}', '{"l": "1"}', T1, T1)),
    (
        "containers",
        (
            "n",
            "c",
            '{"a": "1"}',
            "im",
            "r",
            "o",
            b"opt",
            "t",
            b"\x00spec",
            "native",
            "k",
            "",
            '{"e": ["et", "AQ=="]}',
            T1,
            T1,
        ),
    ),
    ("snapshots", (1, "native", "n", "k", None, "active", '{"s": "1"}', 0, 0, T1, T1)),
]


def test_rows_stored_by_the_orm_read_back_the_same(tmp_path: Path) -> None:
    db = Database(sqlite_url(tmp_path))
    db.migrate()
    with sqlite3.connect(tmp_path / "meta.db") as raw:
        for table, row in STORED:
            raw.execute(f"INSERT INTO {table} VALUES ({', '.join('?' * len(row))})", row)
    snapshots = SnapshotStore(db, NativeBackend(), tmp_path / "snapshots")

    async def read() -> list[object]:
        return [
            await NamespaceStore(db).get("n"),
            await LeaseStore(db).list("n"),
            await LeaseStore(db).list_resources("n", "l"),
            await ContentRecords(db).get("n", DIGEST),
            await ImageStore(db).get("n", "img"),
            await ContainerStore(db).get("n", "c"),
            await snapshots.stat("n", "k"),
        ]

    assert asyncio.run(read()) == [
        Namespace("n", {"a": "ü"}),
        [Lease("l", WHEN, {"x": "y"})],
        [LeaseResource(DIGEST, "content")],
        ContentInfo(DIGEST, 7, WHEN, WHEN, {"k": "v"}),
        Image("img", Descriptor("mt", DIGEST, 7, {"an": "1"}), {"l": "1"}, WHEN, WHEN),
        Container(
            id="c",
            runtime="r",
            spec=Encoded("t", b"\x00spec"),
            runtime_options=Encoded("o", b"opt"),
            image="im",
            labels={"a": "1"},
            snapshotter="native",
            snapshot_key="k",
            extensions={"e": Encoded("et", b"\x01")},
            created_at=WHEN,
            updated_at=WHEN,
        ),
        SnapshotInfo("k", SnapshotKind.ACTIVE, "", {"s": "1"}, WHEN, WHEN),
    ]
    db.close()


def test_new_rows_are_stored_as_the_orm_stored_them(tmp_path: Path) -> None:
    db = Database(sqlite_url(tmp_path))
    db.migrate()

    async def write() -> None:
        await NamespaceStore(db).create("n", {"a": "ü"})
        await LeaseStore(db).create("n", "l", {"x": "y"})
        await ContentRecords(db).add("n", DIGEST, 7, {"k": "v"}, "l")
        target = Descriptor("mt", DIGEST, 7, {"an": "1"})
        await ImageStore(db).create("n", Image("img", target, {"l": "1"}))
        container = Container(
            id="c",
            runtime="r",
            spec=Encoded("t", b"\x00spec"),
            runtime_options=Encoded("o", b"opt"),
            image="im",
            labels={"a": "1"},
            snapshotter="native",
            snapshot_key="k",
            extensions={"e": Encoded("et", b"\x01")},
        )
        await ContainerStore(db).create("n", container)
        snapshots = SnapshotStore(db, NativeBackend(), tmp_path / "snapshots")
        await snapshots.create("n", "k", "", {"s": "1"}, SnapshotKind.ACTIVE, None)

    asyncio.run(write())
    db.close()
    with sqlite3.connect(tmp_path / "meta.db") as raw:
        for table, expected in STORED:
            (row,) = raw.execute(f"SELECT * FROM {table}").fetchall()
            # Times differ (now), but are stored as integer microseconds all the same.
            times = [i for i, v in enumerate(expected) if v == T1]
            assert all(isinstance(row[i], int) and row[i] > T1 for i in times), table
            assert [v for i, v in enumerate(row) if i not in times] == [
                v for i, v in enumerate(expected) if i not in times
            ], table
