"""Disk usage of a snapshot's files: allocated bytes and inodes, hard links counted once."""

from __future__ import annotations

import os
from pathlib import Path

from linerd.core.types import Usage


def disk_usage(root: Path) -> Usage:
    seen: set[tuple[int, int]] = set()
    usage = Usage()
    stack = [str(root)]
    while stack:
        directory = stack.pop()
        try:
            entries = list(os.scandir(directory))
        except FileNotFoundError:
            continue
        for entry in entries:
            st = entry.stat(follow_symlinks=False)
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            usage.inodes += 1
            usage.size += st.st_blocks * 512
            if entry.is_dir(follow_symlinks=False):
                stack.append(entry.path)
    return usage
