"""Test-only crash points: with LINERD_CRASH_AT=<name>, linerd SIGKILLs itself there.

The crash-matrix tests use these to kill the daemon at the worst moments of each operation
and check that a restart finds the store consistent. Without the variable a point costs one
dictionary lookup.
"""

from __future__ import annotations

import os
import signal

_AT = os.environ.get("LINERD_CRASH_AT", "")


def point(name: str) -> None:
    if _AT and name == _AT:
        os.kill(os.getpid(), signal.SIGKILL)
