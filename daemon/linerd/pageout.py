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

import contextlib
import ctypes

_MADV_PAGEOUT = 21
_libc: ctypes.CDLL | None = None


def _lib() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        lib = ctypes.CDLL(None, use_errno=True)
        lib.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        lib.madvise.restype = ctypes.c_int
        _libc = lib
    return _libc


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


def pss_file_kb() -> int:
    """This process's file-backed PSS in kB (0 where the kernel does not say)."""
    with contextlib.suppress(OSError), open("/proc/self/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss_File:"):
                return int(line.split()[1])
    return 0


def page_out() -> bool:
    """Reclaim this process's program pages that only it maps. False where the kernel
    refuses (before 5.4, or not Linux). madvise runs without the GIL (ctypes drops it)."""
    try:
        with open("/proc/self/maps") as f:
            ranges = program_ranges(f.read())
        madvise = _lib().madvise
    except (OSError, AttributeError):
        return False
    done = False
    for start, length in ranges:
        # A mapping unmapped since the read fails alone (ENOMEM); EINVAL: no MADV_PAGEOUT.
        done |= madvise(start, length, _MADV_PAGEOUT) == 0
    return done
