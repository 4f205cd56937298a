"""Read-through caches of single records, filled and invalidated on the database thread.

Every transaction runs on the one database thread, so a cache that only that thread changes
follows commit order: a read transaction stores what it read, and a write transaction drops
the keys it changes before it commits (a failed commit then only costs a miss). A reader on
the event loop therefore sees the value of the last commit touching the key, or misses and
reads in a transaction queued behind any write in flight. Nothing else may write these tables
while a daemon runs (the root lock guarantees that for other processes).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class RecordCache(Generic[K, V]):
    def __init__(self, copy: Callable[[V], V], limit: int = 2048) -> None:
        # Callers get copies: a caller changing a record it read must not change the cache.
        self._copy = copy
        self._limit = limit
        self._items: dict[K, V] = {}

    def get(self, key: K) -> V | None:
        """Any thread. None on a miss."""
        value = self._items.get(key)
        return None if value is None else self._copy(value)

    def put(self, key: K, value: V) -> V:
        """Database thread only, inside the transaction that read `value`. Returns a copy."""
        if len(self._items) >= self._limit and key not in self._items:
            # Oldest first (dicts keep insertion order); a bound, not an LRU: misses are cheap.
            del self._items[next(iter(self._items))]
        self._items[key] = value
        return self._copy(value)

    def drop(self, key: K) -> None:
        """Database thread only, inside the transaction that changes the record."""
        self._items.pop(key, None)

    def __len__(self) -> int:
        return len(self._items)
