"""Strict, bounded JSON: duplicate keys refused, nesting depth and size limited.

Used for policy files (written by the operator) and for signature payloads and attachment
manifests (written by anyone): a hostile document must fail with a reason, never exhaust memory
or the recursion limit.
"""

from __future__ import annotations

import json
from collections.abc import Set
from typing import Any

MAX_DEPTH = 32


class JSONRefused(ValueError):
    """The document is not acceptable JSON; the message says why."""


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise JSONRefused(f"duplicate key {key!r}")
        out[key] = value
    return out


def _check_depth(data: str) -> None:
    # Measured on the text before parsing, so the parser never recurses deeply.
    depth = 0
    in_string = False
    escaped = False
    for ch in data:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                raise JSONRefused(f"nested deeper than {MAX_DEPTH} levels")
        elif ch in "]}":
            depth -= 1


def loads(data: bytes | str, *, max_bytes: int) -> Any:
    """Parse ``data``; raise JSONRefused naming the problem."""
    if len(data) > max_bytes:
        raise JSONRefused(f"larger than {max_bytes} bytes")
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise JSONRefused(f"not UTF-8 ({e.reason} at byte {e.start})") from None
    else:
        text = data
    _check_depth(text)
    try:
        return json.loads(text, object_pairs_hook=_pairs)
    except JSONRefused:
        raise
    except (json.JSONDecodeError, RecursionError) as e:
        raise JSONRefused(f"invalid JSON: {e}") from None


def exact_fields(
    obj: Any, what: str, required: Set[str], optional: Set[str] = frozenset()
) -> dict[str, Any]:
    """``obj`` as a dict with exactly ``required`` and at most ``optional`` keys."""
    if not isinstance(obj, dict):
        raise JSONRefused(f"{what} is not a JSON object")
    unknown = sorted(set(obj) - required - optional)
    if unknown:
        raise JSONRefused(f"{what} has unknown field {unknown[0]!r}")
    missing = sorted(required - set(obj))
    if missing:
        raise JSONRefused(f"{what} is missing field {missing[0]!r}")
    return obj
