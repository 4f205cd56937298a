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

from sqlalchemy import Engine, create_engine, event, select
from sqlalchemy.orm import Session, sessionmaker

from linerd.metadata import migrations
from linerd.metadata.models import Meta

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
    cur.close()


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine: Engine = create_engine(url, connect_args=_connect_args(url))
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="linerd-db")

    def migrate(self) -> int:
        with self.engine.connect() as conn:
            return migrations.migrate(conn)

    async def run(self, fn: Callable[[Session], T]) -> T:
        """Run `fn` in one transaction on the database thread; commit if it returns."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._transaction, fn)

    def run_sync(self, fn: Callable[[Session], T]) -> T:
        """Same as `run`, for start-up and tests: blocks the caller."""
        return self._executor.submit(self._transaction, fn).result()

    def _transaction(self, fn: Callable[[Session], T]) -> T:
        with self._sessions.begin() as session:
            result = fn(session)
        # Committed. Still on the database thread, so before any other transaction.
        for callback in session.info.pop(_AFTER_COMMIT, ()):
            callback()
        return result

    @staticmethod
    def after_commit(session: Session, callback: Callable[[], None]) -> None:
        """Call `callback` on the database thread once `session`'s transaction committed
        (never if it rolls back): where a record cache learns a value it just wrote."""
        session.info.setdefault(_AFTER_COMMIT, []).append(callback)

    def server_uuid(self) -> str:
        """The uuid Introspection/Server reports; created once, stable across restarts."""

        def get_or_create(session: Session) -> str:
            row = session.scalar(select(Meta).where(Meta.key == "uuid"))
            if row is None:
                row = Meta(key="uuid", value=str(uuid.uuid4()))
                session.add(row)
            return row.value

        return self.run_sync(get_or_create)

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        self.engine.dispose()


def _connect_args(url: str) -> dict[str, Any]:
    # The connection is made and used on the one worker thread, but created lazily.
    return {"check_same_thread": False} if url.startswith("sqlite") else {}
