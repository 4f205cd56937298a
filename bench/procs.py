"""Processes as the bench samples them: memory from smaps_rollup, command lines, parents."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


def mem_kb(pid: int) -> dict[str, int]:
    """Rss, Pss, Pss_Anon and Pss_File (kB) of a process, from /proc/<pid>/smaps_rollup."""
    out = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("Rss", "Pss", "Pss_Anon", "Pss_File"):
                out[key.lower()] = int(rest.split()[0])
    return out


def pss_mb(pids: list[int]) -> float:
    """The processes' PSS summed, in MB (a process gone meanwhile counts 0)."""
    return sum(mem_kb(p).get("pss", 0) for p in pids) / 1024


def run_delay_s(pid: int) -> dict[int, float]:
    """Each thread's time spent runnable but waiting for a CPU (s), from schedstat."""
    out = {}
    with contextlib.suppress(OSError):
        for entry in os.scandir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = Path(entry.path, "schedstat").read_text().split()
                out[int(entry.name)] = int(fields[1]) / 1e9
    return out


def cmdlines() -> Iterator[tuple[int, list[str]]]:
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            raw = Path(entry.path, "cmdline").read_bytes()
        except OSError:
            continue
        if raw:
            yield int(entry.name), raw.decode(errors="replace").rstrip("\0").split("\0")


def parent_of(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0
