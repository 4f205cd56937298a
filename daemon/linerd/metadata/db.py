"""The database handle: one engine, one worker thread, one transaction per call.

Every query runs on a single dedicated thread, never on the event loop. One writer thread
also means SQLite never sees two writers contend for its lock.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event, insert, select

from linerd.metadata import migrations
from linerd.metadata.models import meta

T = TypeVar("T")
_AFTER_COMMIT = "linerd.after_commit"


def sqlite_url(root: Path) -> str:
    return f"sqlite:///{root / 'meta.db'}"


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    # NORMAL (in WAL mode): a commit is appended to the WAL without an fsync; the WAL is
    # synced at checkpoints. A commit is in the page cache when the call returns, so a crash
    # of linerd loses nothing; only a power loss can drop the last transactions, and the
    # database is consistent either way (docs/RELIABILITY.md).
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=5000")
    # SQLite's page cache at 256 KiB (default 2 MB): the pages it drops are in the kernel's
    # page cache, a read away (a few microseconds), and the calls that run often read few
    # pages (records are cached above it). With the CRI at 30 pods of 2 the connection held
    # ~0.9 MB, mostly pages of the containers' specs, which only their updates read; the cap
    # kept the daemon's Pss_Anon 0.4 MB lower, the CRI's write calls as fast.
    cur.execute("PRAGMA cache_size=-256")
    cur.close()


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine: Engine = create_engine(url, connect_args=_connect_args(url))
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="linerd-db")

    def migrate(self) -> int:
        with self.engine.connect() as conn:
            return migrations.migrate(conn)

    async def run(self, fn: Callable[[Connection], T]) -> T:
        """Run `fn` in one transaction on the database thread; commit if it returns."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._transaction, fn)

    def run_sync(self, fn: Callable[[Connection], T]) -> T:
        """Same as `run`, for start-up and tests: blocks the caller."""
        return self._executor.submit(self._transaction, fn).result()

    def _transaction(self, fn: Callable[[Connection], T]) -> T:
        callbacks: list[Callable[[], None]] = []
        with self.engine.begin() as conn:
            # `info` belongs to the pooled DBAPI connection and outlives this transaction:
            # a rolled-back transaction's callbacks must not reach the next one.
            conn.info[_AFTER_COMMIT] = callbacks
            try:
                result = fn(conn)
            finally:
                del conn.info[_AFTER_COMMIT]
        # Committed. Still on the database thread, so before any other transaction.
        for callback in callbacks:
            callback()
        return result

    @staticmethod
    def after_commit(conn: Connection, callback: Callable[[], None]) -> None:
        """Call `callback` on the database thread once `conn`'s transaction committed
        (never if it rolls back): where a record cache learns a value it just wrote."""
        conn.info[_AFTER_COMMIT].append(callback)

    def server_uuid(self) -> str:
        """The uuid Introspection/Server reports; created once, stable across restarts."""

        def get_or_create(conn: Connection) -> str:
            value = conn.scalar(select(meta.c.value).where(meta.c.key == "uuid"))
            if value is None:
                value = str(uuid.uuid4())
                conn.execute(insert(meta).values(key="uuid", value=value))
            return value

        return self.run_sync(get_or_create)

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        self.engine.dispose()


def _connect_args(url: str) -> dict[str, Any]:
    # The connection is made and used on the one worker thread, but created lazily.
    return {"check_same_thread": False} if url.startswith("sqlite") else {}
