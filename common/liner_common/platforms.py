"""Platforms (os/architecture/variant) and containerd's rules for matching them.

Kept free of the daemon's other modules: the CLI's `images ls` imports it without loading
`linerd.imagespec` (hashlib, the core types: ~20 ms of a short command).
"""

from __future__ import annotations

import platform as host
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)

    def normalized(self) -> Platform:
        arch, variant = _ARCH_ALIASES.get(self.architecture, (self.architecture, self.variant))
        variant = variant or self.variant
        if arch == "arm64" and variant == "v8":
            variant = ""  # containerd treats arm64 and arm64/v8 alike
        return Platform(self.os.lower(), arch, variant)

    def matches(self, other: Platform) -> bool:
        a, b = self.normalized(), other.normalized()
        return (
            a.os == b.os
            and a.architecture == b.architecture
            and (not a.variant or not b.variant or a.variant == b.variant)
        )


_ARCH_ALIASES = {
    "x86_64": ("amd64", ""),
    "x86-64": ("amd64", ""),
    "aarch64": ("arm64", ""),
    "armhf": ("arm", "v7"),
    "armel": ("arm", "v6"),
    "i386": ("386", ""),
}


def host_platform() -> Platform:
    machine = host.machine()
    arch, variant = _ARCH_ALIASES.get(machine, (machine, ""))
    if machine.startswith("armv7"):
        arch, variant = "arm", "v7"
    return Platform("linux", arch, variant)


def or_host(wanted: Sequence[Platform]) -> list[Platform]:
    """The platforms asked for; none asked for means this machine's."""
    return list(wanted) or [host_platform()]


def matches_any(platform: Platform | None, wanted: Sequence[Platform]) -> bool:
    """Whether `platform` matches one of `wanted` (an entry without a platform matches none)."""
    return platform is not None and any(platform.matches(p) for p in wanted)


def select(
    entries: Iterable[T], platform_of: Callable[[T], Platform | None], wanted: Sequence[Platform]
) -> list[T]:
    """The entries (an index's manifests) whose platform matches one of `wanted`, in the
    entries' order: the first is the one a pull of one platform takes."""
    return [e for e in entries if matches_any(platform_of(e), wanted)]


def first(
    entries: Iterable[T], platform_of: Callable[[T], Platform | None], wanted: Sequence[Platform]
) -> T | None:
    """The first entry whose platform matches one of `wanted`, or None."""
    return next((e for e in entries if matches_any(platform_of(e), wanted)), None)
