"""Bench-only: time every event-loop callback and garbage collection in linerd.

Not part of the daemon. Put this directory first on PYTHONPATH of a bench run (linerd
inherits the environment) and every linerd process times each callback its event loop runs
(wall and the thread's CPU, keyed by the gRPC method of the call it serves and the callback's
coroutine) and each collection of Python's cyclic GC (which holds the GIL, whichever thread
runs it). SIGUSR2 writes what was gathered since the last signal to LINER_LOOPSTAT-<n>.json
and starts again; exit writes LINER_LOOPSTAT. `python bench/loopstat/show.py FILE` prints
it. Callbacks and collections longer than LINER_SLOW_MS (5) are listed one by one.
"""

from __future__ import annotations

import os
from typing import Any


def _install() -> None:
    try:
        with open("/proc/self/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return
    if b"linerd.main" not in argv:
        return
    import asyncio.events
    import atexit
    import gc
    import json
    import signal
    import threading
    import time

    out = os.environ.get("LINER_LOOPSTAT", "/tmp/loopstat.json")
    slow_s = float(os.environ.get("LINER_SLOW_MS", "5")) / 1000
    # key -> [calls, wall s, cpu s, max wall s]
    stats: dict[str, list[float]] = {}
    slow: list[tuple[float, float, float, str, str]] = []
    run = asyncio.events.Handle._run
    clock, cpu = time.perf_counter, time.thread_time

    def key_of(h: Any) -> tuple[str, Any]:
        method = None
        if h._context is not None:
            for var, value in h._context.items():
                if var.name == "structlog_method":
                    method = value
                    break
        owner = getattr(h._callback, "__self__", None)
        if owner is not None and hasattr(owner, "get_coro"):
            coro = owner.get_coro()
            name = getattr(coro, "__qualname__", None) or type(coro).__name__
        else:
            name = getattr(h._callback, "__qualname__", None) or type(h._callback).__name__
        return f"{method or '-'} | {name}", owner

    def add(key: str, wall: float, spent: float, where: str) -> None:
        s = stats.setdefault(key, [0, 0.0, 0.0, 0.0])
        s[0] += 1
        s[1] += wall
        s[2] += spent
        s[3] = max(s[3], wall)
        if wall > slow_s:
            ms = (round(wall * 1e3, 2), round(spent * 1e3, 2))
            slow.append((round(time.time(), 3), *ms, key, where))

    def timed(self: Any) -> None:
        t0, c0 = clock(), cpu()
        run(self)
        wall, spent = clock() - t0, cpu() - c0
        key, owner = key_of(self)
        where = ""
        if wall > slow_s and owner is not None and hasattr(owner, "get_stack"):
            frames = owner.get_stack(limit=3)
            names = (f"{f.f_code.co_filename.rsplit('/', 2)[-1]}:{f.f_lineno}" for f in frames)
            where = " < ".join(names)
        add(key, wall, spent, where)

    asyncio.events.Handle._run = timed  # type: ignore[method-assign]
    started: list[float] = []

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[:] = [clock()]
            return
        wall = clock() - (started[0] if started else clock())
        thread = "" if threading.current_thread() is threading.main_thread() else " (other thread)"
        add(f"gc gen{info['generation']}{thread}", wall, wall, str(info))

    gc.callbacks.append(on_gc)
    dumps = [0]

    def dump(path: str) -> None:
        rows = sorted(stats.items(), key=lambda kv: -kv[1][2])
        info = {
            "objects": len(gc.get_objects()),
            "frozen": gc.get_freeze_count(),
            "gc": gc.get_stats(),
        }
        with open(path, "w") as f:
            json.dump({"stats": [[k, *v] for k, v in rows], "slow": slow, "info": info}, f)
        stats.clear()
        slow.clear()

    def on_usr2(*_: object) -> None:
        dumps[0] += 1
        dump(out.replace(".json", f"-{dumps[0]}.json"))

    atexit.register(lambda: dump(out))
    signal.signal(signal.SIGUSR2, on_usr2)


_install()
