"""The CPU priority of the serving path: the event loop's thread and grpc's own threads.

Every call goes through grpc's threads (socket I/O) and the event loop's thread. Under load,
with 200 containers running and 10 clients creating and removing them (bench (g)), the loop's
thread was runnable but waiting for a CPU ~0.5 s of every second, behind the processes the
daemon starts (runc, conmon, CNI plugins) and its clients, and the Lists' p99 was 60-70 ms.
So these threads run at a lower nice value (config `loop_nice`), and nothing else does:
the loop's thread is SCHED_RESET_ON_FORK, so each thread and process it creates (the
workers, the database's thread, conmon, runc, a container) starts at nice 0 again.
"""

from __future__ import annotations

import contextlib
import os
import threading


def prioritize_loop(nice: int) -> str:
    """Run the calling thread (the event loop's, before it starts) at `nice` (<= 0).
    Returns "" when done, else why not. Only from nice 0: the reset on fork goes to 0,
    which for a daemon started niced would raise what it starts above its own start."""
    if nice == 0:
        return "loop_nice is 0"
    started = os.getpriority(os.PRIO_PROCESS, 0)
    if started != 0:
        return f"linerd was started at nice {started}"
    try:
        os.sched_setscheduler(0, os.SCHED_OTHER | os.SCHED_RESET_ON_FORK, os.sched_param(0))
        os.setpriority(os.PRIO_PROCESS, 0, nice)  # Linux: this thread alone
    except OSError as e:
        return str(e)
    return ""


def prioritize_grpc_threads(nice: int) -> None:
    """Give `nice` to grpc's threads once the server runs: those Python did not start (its
    socket I/O and timers) and grpc.aio's poller (a Python thread running `_poll_wrapper`,
    which hands each completion to the loop). The threads they start later inherit it; none
    of them starts a process."""
    python = {t.native_id for t in threading.enumerate() if not t.name.endswith("(_poll_wrapper)")}
    for name in os.listdir("/proc/self/task"):
        tid = int(name)
        if tid not in python:
            with contextlib.suppress(OSError):  # gone meanwhile
                os.setpriority(os.PRIO_PROCESS, tid, nice)
