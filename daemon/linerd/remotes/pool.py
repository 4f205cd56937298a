"""Registry clients kept across pulls: one per registry configuration while it is in use.

A pull that made its own `RegistryClient` opened a new connection (a TCP, maybe a TLS
handshake), asked the token server again for a private image, and set up and tore down
its HTTP client on the event loop: ~1 ms of CPU and a round trip or more per pull, which a
CRI PullImage of a small image (three requests) felt. The pool hands out one client per
distinct configuration (`HostsConfig.key`: the registries' endpoints, TLS settings,
credentials and plain HTTP), so pulls with other credentials never share a connection or a
token, and closes a client once nothing used it for `idle` seconds (its connections and
tokens go with it). A configuration reloaded into something else is a new key.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Hashable
from dataclasses import dataclass

from linerd.remotes.client import RegistryClient
from linerd.remotes.hosts import HostsConfig

IDLE_SECONDS = 60.0


@dataclass(slots=True)
class _Entry:
    client: RegistryClient
    users: int = 0
    uses: int = 0  # every hand-out: an expiry armed before the last one is stale


class ClientPool:
    def __init__(
        self,
        idle: float = IDLE_SECONDS,
        factory: Callable[[HostsConfig], RegistryClient] = RegistryClient,
    ) -> None:
        self._idle = idle
        self._factory = factory
        self._entries: dict[Hashable, _Entry] = {}
        self._closing: set[asyncio.Task[None]] = set()

    @contextlib.asynccontextmanager
    async def client(self, hosts: HostsConfig) -> AsyncIterator[RegistryClient]:
        """The client for `hosts`, shared with concurrent and later users of an equal
        configuration."""
        key = hosts.key()
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _Entry(self._factory(hosts))
        entry.users += 1
        entry.uses += 1
        try:
            yield entry.client
        finally:
            entry.users -= 1
            if entry.users == 0:
                asyncio.get_running_loop().call_later(
                    self._idle, self._expire, key, entry, entry.uses
                )

    def __len__(self) -> int:
        return len(self._entries)

    def _expire(self, key: Hashable, entry: _Entry, uses: int) -> None:
        if entry.users or entry.uses != uses or self._entries.get(key) is not entry:
            return
        del self._entries[key]
        task = asyncio.create_task(entry.client.aclose())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def aclose(self) -> None:
        entries, self._entries = list(self._entries.values()), {}
        for entry in entries:
            await entry.client.aclose()
