"""Handing the kernel back the program pages only linerd maps, once a burst of work is over.

The daemon's code is mapped from files: its libraries and extension modules (grpc's cygrpc
alone is 12 MB). What start-up ran once (imports, migrations, recovery) or a pull ran stays
resident and counted in linerd's memory until the machine runs short: ~13 MB of file-backed
PSS at bench (d)'s sample, of which ~3 MB serve nothing after start-up. madvise(MADV_PAGEOUT)
(Linux 5.4) reclaims those pages now. It takes only clean pages that no other process maps,
and only from read-only private mappings (code and constants; the writable ones hold the
process's relocated data, anonymous memory). The pages the daemon still runs come back
from the file at their next use, once, by a page fault.
"""

from __future__ import annotations

import ctypes

_MADV_PAGEOUT = 21


def program_ranges(maps: str) -> list[tuple[int, int]]:
    """(start, length) of each read-only private mapping of a file in a /proc/PID/maps text."""
    ranges = []
    for line in maps.splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) < 6 or not fields[5].startswith("/"):
            continue  # anonymous, [heap], [stack], [vdso]
        perms = fields[1]
        if "w" in perms or not perms.endswith("p"):
            continue
        start, end = (int(x, 16) for x in fields[0].split("-"))
        ranges.append((start, end - start))
    return ranges


def page_out() -> int:
    """Reclaim this process's program pages that only it maps. Returns how many mappings
    the kernel took advice for: 0 where it refuses (before 5.4, or not Linux). Called after
    bursts only, so libc is looked up each time; madvise runs without the GIL."""
    try:
        with open("/proc/self/maps") as f:
            ranges = program_ranges(f.read())
        madvise = ctypes.CDLL(None).madvise
    except (OSError, AttributeError):
        return 0
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    # A mapping unmapped since the read fails alone (ENOMEM); EINVAL: no MADV_PAGEOUT.
    return sum(madvise(start, length, _MADV_PAGEOUT) == 0 for start, length in ranges)
