"""The serving path's priority (linerd/priority.py), in threads of the test process."""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Callable
from typing import Any

import pytest

from linerd import priority
from linerd.config import Config, ConfigError, validate


def in_thread(fn: Callable[[], Any]) -> Any:
    """fn's result, run in a thread of its own (a nice value is per thread in Linux)."""
    out: list[Any] = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    t.join()
    return out[0]


def nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, 0)


@pytest.mark.skipif(os.geteuid() != 0, reason="a negative nice value needs root")
def test_the_loop_thread_alone_gets_the_priority() -> None:
    def body() -> tuple[str, int, int, str]:
        why_not = priority.prioritize_loop(-5)
        child_thread = in_thread(nice)
        child = subprocess.run(["cut", "-d ", "-f19", "/proc/self/stat"], capture_output=True)
        return why_not, nice(), child_thread, child.stdout.decode()

    assert in_thread(body) == ("", -5, 0, "0\n")


def test_nothing_changes_at_0_or_from_a_niced_start() -> None:
    assert in_thread(lambda: (priority.prioritize_loop(0), nice())) == ("loop_nice is 0", 0)

    def niced() -> tuple[str, int]:
        os.setpriority(os.PRIO_PROCESS, 0, 3)
        return priority.prioritize_loop(-10), nice()

    assert in_thread(niced) == ("linerd was started at nice 3", 3)


@pytest.mark.parametrize("value", [-21, 1])
def test_loop_nice_out_of_range_is_refused(value: int) -> None:
    with pytest.raises(ConfigError, match="loop_nice"):
        validate(Config(loop_nice=value))
