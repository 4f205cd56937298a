"""Small asyncio helpers the pull, push and unpack machinery share."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import TypeVar

from linerd.content.live import in_reader_thread

T = TypeVar("T")


def first_error(group: BaseExceptionGroup) -> BaseException:
    """The first real error of a task group (cancellations are only its echo)."""
    for error in group.exceptions:
        if isinstance(error, BaseExceptionGroup):
            return first_error(error)
        if not isinstance(error, asyncio.CancelledError):
            return error
    return group.exceptions[0]


class SingleFlight:
    """One run per key at a time; concurrent callers share its result."""

    def __init__(self) -> None:
        self._running: dict[tuple[str, ...], asyncio.Future[object]] = {}

    async def run(self, key: tuple[str, ...], work: Callable[[], Awaitable[T]]) -> T:
        running = self._running.get(key)
        if running is not None:
            return await asyncio.shield(running)  # type: ignore[return-value]
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self._running[key] = future
        try:
            result = await work()
        except BaseException as e:
            future.set_exception(e)
            future.exception()  # retrieved: no "never retrieved" warning when nobody waits
            raise
        else:
            future.set_result(result)
            return result
        finally:
            del self._running[key]


async def finish_thread(fn: Callable[[], T]) -> T:
    """Run blocking `fn` in a thread (of the live readers' pool: it may read a blob still
    being written); if cancelled meanwhile, still wait for the thread to end before
    re-raising, so that the caller's cleanup never races the thread's writes. (A thread
    blocked on a download ends when the download is cancelled too.)"""
    future = asyncio.ensure_future(in_reader_thread(fn))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        with contextlib.suppress(BaseException):
            await future
        raise
