from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text

from linerd.metadata import migrations
from linerd.metadata.db import Database, sqlite_url
from linerd.metadata.models import Base

pytestmark = pytest.mark.unit


def test_migrations_create_what_the_models_describe(tmp_path: Path) -> None:
    db = Database(sqlite_url(tmp_path))
    assert db.migrate() == migrations.MIGRATIONS[-1][0]
    inspector = inspect(db.engine)
    for table in Base.metadata.sorted_tables:
        columns = {c["name"] for c in inspector.get_columns(table.name)}
        assert columns == {c.name for c in table.columns}, table.name
        primary = set(inspector.get_pk_constraint(table.name)["constrained_columns"])
        assert primary == {c.name for c in table.primary_key.columns}, table.name
    db.close()


def test_migrate_is_idempotent_and_wal(tmp_path: Path) -> None:
    db = Database(sqlite_url(tmp_path))
    first = db.migrate()
    assert db.migrate() == first
    with db.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
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
