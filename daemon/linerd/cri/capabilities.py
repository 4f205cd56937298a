"""Linux capability names, and the set linerd itself holds.

A container can only be given capabilities its runtime's caller has: runc raises the
permitted set with capset(2), which fails for a capability the daemon lacks (this machine
runs without CAP_SYS_RESOURCE). So "all capabilities" (privileged, add ALL) means all of the
daemon's, as containerd's `WithAllCurrentCapabilities`.
"""

from __future__ import annotations

from collections.abc import Iterable

from liner_common.ocispec import ALL_CAPABILITIES

# Bit number -> name (linux/capability.h).
NAMES = tuple(ALL_CAPABILITIES)
KNOWN = frozenset(NAMES)


def normalize(name: str) -> str:
    """``net_admin``, ``NET_ADMIN`` and ``CAP_NET_ADMIN`` all name CAP_NET_ADMIN (the CRI
    sends names without the prefix; some clients add it)."""
    upper = name.strip().upper()
    return upper if upper.startswith("CAP_") else "CAP_" + upper


def from_mask(mask: int) -> list[str]:
    """The known capabilities in a bit mask, in bit order (unknown newer bits are left out:
    runc could not name them either)."""
    return [n for bit, n in enumerate(NAMES) if mask >> bit & 1]


def parse_status(text: str, field: str = "CapEff") -> list[str]:
    """The capabilities of one line (``CapEff:\\t000001ff...``) of /proc/<pid>/status."""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key == field:
            return from_mask(int(value.strip(), 16))
    raise ValueError(f"no {field} line")


_current: list[str] | None = None


def current() -> list[str]:
    """The daemon's effective capabilities (read once: they never change while it runs)."""
    global _current
    if _current is None:
        with open("/proc/self/status") as f:
            _current = parse_status(f.read())
    return list(_current)


def ordered(names: Iterable[str]) -> list[str]:
    """Known names in bit order first, then any others as given (deduplicated)."""
    wanted = dict.fromkeys(names)
    known = [n for n in NAMES if n in wanted]
    return known + [n for n in wanted if n not in KNOWN]
