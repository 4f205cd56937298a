"""Output and argument formats for the CLI, following ctr (and docker's go-units) closely."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta

_SIZE_UNITS = ("B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB")
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


def human_size(size: float) -> str:
    """Decimal units, four significant digits: `512B`, `1.049MB` (go-units HumanSize)."""
    i = 0
    while size >= 1000 and i < len(_SIZE_UNITS) - 1:
        size /= 1000
        i += 1
    return f"{size:.4g}{_SIZE_UNITS[i]}"


def human_duration(d: timedelta) -> str:
    """`Less than a second`, `5 minutes`, `About an hour`, `3 days` (go-units HumanDuration)."""
    seconds = int(d.total_seconds())
    if seconds < 1:
        return "Less than a second"
    if seconds == 1:
        return "1 second"
    if seconds < 60:
        return f"{seconds} seconds"
    minutes = int(d.total_seconds() / 60)
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = int(d.total_seconds() / 3600 + 0.5)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{int(d.total_seconds() / 3600 / 24 / 365)} years"


def age(when: datetime | None, now: datetime | None = None) -> str:
    if when is None:
        return "-"
    return human_duration((now or datetime.now(UTC)) - when)


def parse_duration(text: str) -> timedelta:
    """A Go duration (`24h`, `1h30m`, `90s`, `1.5h`); a bare `0` is zero. ValueError if bad."""
    text = text.strip()
    if text in ("0", "-0", "+0"):
        return timedelta(0)
    sign = -1 if text.startswith("-") else 1
    body = text.lstrip("+-")
    if not body:
        raise ValueError(f"invalid duration {text!r}")
    seconds = 0.0
    pos = 0
    while pos < len(body):
        m = _DURATION_PART.match(body, pos)
        if m is None:
            raise ValueError(f"invalid duration {text!r}: want e.g. 24h, 30m or 1h30m")
        seconds += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    return timedelta(seconds=sign * seconds)


def rfc3339(when: datetime) -> str:
    """UTC with a `Z`, whole seconds: `2024-05-01T12:00:00Z`."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def labels_text(labels: Mapping[str, str]) -> str:
    """`k=v,k2=v2` sorted by key, or `-` for none."""
    if not labels:
        return "-"
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def parse_labels(pairs: Iterable[str]) -> dict[str, str]:
    """KEY=VALUE arguments (VALUE may be empty, KEY may not). ValueError names the bad one."""
    labels: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"invalid label {pair!r}: want KEY=VALUE")
        labels[key] = value
    return labels


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Columns padded to their widest cell, separated by three spaces; no trailing blanks."""
    rows = [list(header), *(list(r) for r in rows)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = []
    for r in rows:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(r[:-1])]
        lines.append("   ".join([*cells, r[-1]]).rstrip())
    return "\n".join(lines) + "\n"


def snapshot_tree(snapshots: Iterable[tuple[str, str]]) -> str:
    """(name, parent) pairs drawn as ctr's `snapshots tree` does, children sorted by name::

        sha256:aaa
          \\_ sha256:bbb
            \\_ sha256:ccc

    A snapshot whose parent is not in the list is drawn as a root.
    """
    pairs = sorted(snapshots)
    names = {name for name, _ in pairs}
    children: dict[str, list[str]] = {}
    roots = []
    for name, parent in pairs:
        if parent and parent in names:
            children.setdefault(parent, []).append(name)
        else:
            roots.append(name)
    lines: list[str] = []
    stack = [(name, 0) for name in reversed(roots)]
    while stack:
        name, level = stack.pop()
        lines.append(f"{'  ' * level}\\_ {name}" if level else name)
        stack.extend((child, level + 1) for child in reversed(children.get(name, [])))
    return "".join(line + "\n" for line in lines)
