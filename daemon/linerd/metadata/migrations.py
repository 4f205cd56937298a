"""Versioned schema migrations, applied in order at start-up, each in its own transaction.

A migration is never edited once released: change the schema by appending a new one (and
updating `models`). `schema_version` holds the highest applied version.
"""

from __future__ import annotations

from sqlalchemy import Connection, text

MIGRATIONS: list[tuple[int, str, list[str]]] = [
    (
        1,
        "namespaces, leases, content, images",
        [
            """CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)""",
            """CREATE TABLE namespaces (
                name TEXT PRIMARY KEY,
                labels TEXT NOT NULL,
                created_at BIGINT NOT NULL,
                updated_at BIGINT NOT NULL)""",
            """CREATE TABLE leases (
                namespace TEXT NOT NULL REFERENCES namespaces(name),
                id TEXT NOT NULL,
                labels TEXT NOT NULL,
                created_at BIGINT NOT NULL,
                PRIMARY KEY (namespace, id))""",
            """CREATE TABLE lease_resources (
                namespace TEXT NOT NULL,
                lease_id TEXT NOT NULL,
                type TEXT NOT NULL,
                resource_id TEXT NOT NULL,
                PRIMARY KEY (namespace, lease_id, type, resource_id),
                FOREIGN KEY (namespace, lease_id) REFERENCES leases(namespace, id)
                    ON DELETE CASCADE)""",
            """CREATE INDEX lease_resources_by_resource
                ON lease_resources (namespace, type, resource_id)""",
            """CREATE TABLE content (
                namespace TEXT NOT NULL REFERENCES namespaces(name),
                digest TEXT NOT NULL,
                size BIGINT NOT NULL,
                labels TEXT NOT NULL,
                created_at BIGINT NOT NULL,
                updated_at BIGINT NOT NULL,
                PRIMARY KEY (namespace, digest))""",
            """CREATE INDEX content_by_digest ON content (digest)""",
            """CREATE TABLE images (
                namespace TEXT NOT NULL REFERENCES namespaces(name),
                name TEXT NOT NULL,
                media_type TEXT NOT NULL,
                digest TEXT NOT NULL,
                size BIGINT NOT NULL,
                annotations TEXT NOT NULL,
                labels TEXT NOT NULL,
                created_at BIGINT NOT NULL,
                updated_at BIGINT NOT NULL,
                PRIMARY KEY (namespace, name))""",
        ],
    ),
    (
        2,
        "snapshots",
        [
            """CREATE TABLE snapshots (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                snapshotter TEXT NOT NULL,
                namespace TEXT NOT NULL REFERENCES namespaces(name),
                key TEXT NOT NULL,
                parent TEXT,
                kind TEXT NOT NULL,
                labels TEXT NOT NULL,
                size BIGINT NOT NULL,
                inodes BIGINT NOT NULL,
                created_at BIGINT NOT NULL,
                updated_at BIGINT NOT NULL,
                UNIQUE (snapshotter, namespace, key))""",
            """CREATE INDEX snapshots_by_parent ON snapshots (snapshotter, namespace, parent)""",
        ],
    ),
    (
        3,
        "containers",
        [
            """CREATE TABLE containers (
                namespace TEXT NOT NULL REFERENCES namespaces(name),
                id TEXT NOT NULL,
                labels TEXT NOT NULL,
                image TEXT NOT NULL,
                runtime TEXT NOT NULL,
                runtime_options_type TEXT,
                runtime_options BLOB,
                spec_type TEXT NOT NULL,
                spec BLOB NOT NULL,
                snapshotter TEXT NOT NULL,
                snapshot_key TEXT NOT NULL,
                sandbox TEXT NOT NULL,
                extensions TEXT NOT NULL,
                created_at BIGINT NOT NULL,
                updated_at BIGINT NOT NULL,
                PRIMARY KEY (namespace, id))""",
        ],
    ),
]


def current_version(conn: Connection) -> int:
    conn.execute(text("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)"))
    row = conn.execute(text("SELECT max(version) FROM schema_version")).scalar()
    return int(row or 0)


def migrate(conn: Connection) -> int:
    """Bring the schema up to date; returns the version now in force."""
    version = current_version(conn)
    conn.commit()
    latest = MIGRATIONS[-1][0]
    if version > latest:
        raise RuntimeError(
            f"metadata schema version {version} is newer than this linerd knows ({latest})"
        )
    for number, _description, statements in MIGRATIONS:
        if number <= version:
            continue
        for statement in statements:
            conn.execute(text(statement))
        conn.execute(text("INSERT INTO schema_version (version) VALUES (:v)"), {"v": number})
        conn.commit()
        version = number
    return version
