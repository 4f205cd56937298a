"""Paging out the program pages only this process maps: which mappings, and the kernel's part."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from linerd import pageout

pytestmark = pytest.mark.unit

MAPS = """\
55d0c0000000-55d0c0001000 r--p 00000000 fe:01 131 /usr/bin/python3.11
55d0c0001000-55d0c0003000 r-xp 00001000 fe:01 131 /usr/bin/python3.11
55d0c0003000-55d0c0004000 rw-p 00003000 fe:01 131 /usr/bin/python3.11
55d0c1000000-55d0c2000000 rw-p 00000000 00:00 0                          [heap]
7f0000000000-7f0000021000 rw-p 00000000 00:00 0
7f0000100000-7f0000200000 r--s 00000000 fe:01 77 /var/lib/liner/meta.db-shm
7f0000300000-7f0000302000 r-xp 00000000 fe:01 78 /opt/lib/with space.so (deleted)
7ffd00000000-7ffd00002000 r-xp 00000000 00:00 0                          [vdso]
"""


def test_only_read_only_private_file_mappings() -> None:
    assert pageout.program_ranges(MAPS) == [
        (0x55D0C0000000, 0x1000),
        (0x55D0C0001000, 0x2000),
        (0x7F0000300000, 0x2000),
    ]


def test_the_kernel_reclaims_what_only_this_process_maps(tmp_path: Path) -> None:
    """A read-only private mapping of a file on disk, every page touched, is resident until
    page_out(); afterwards its pages are gone from the process (a fresh process: pytest's
    own mappings are not this test's to evict)."""
    data = tmp_path / "lib.bin"
    with open(data, "wb") as f:
        f.write(os.urandom(4 << 20))
        os.fsync(f.fileno())  # clean pages: only those are reclaimed at once
    script = textwrap.dedent(
        f"""
        import mmap, sys
        from linerd import pageout

        def rss_kb():
            lines = open("/proc/self/smaps").read().splitlines()
            at = next(i for i, l in enumerate(lines) if l.endswith({str(data)!r}))
            return int(next(l for l in lines[at:] if l.startswith("Rss:")).split()[1])

        with open({str(data)!r}, "rb") as f:
            m = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ)
        sum(m[i] for i in range(0, len(m), mmap.PAGESIZE))
        before = rss_kb()
        assert pageout.page_out()
        print(before, rss_kb())
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout
    before, after = map(int, out.split())
    assert before == 4096
    assert after <= 256
