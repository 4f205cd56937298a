"""Validation of identifiers, digests and labels, with containerd's rules."""

from __future__ import annotations

import re
from collections.abc import Mapping

from linerd.errdefs import InvalidArgument

_IDENTIFIER = re.compile(r"^[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*$")
_MAX_IDENTIFIER = 76
_DIGEST = re.compile(r"^(sha256):([a-f0-9]{64})$")
_MAX_LABEL = 4096


def identifier(value: str, what: str = "identifier") -> str:
    """Namespaces, lease ids and container ids: alphanumerics joined by `.`, `_` or `-`."""
    if not value:
        raise InvalidArgument(f"{what} must not be empty")
    if len(value) > _MAX_IDENTIFIER:
        raise InvalidArgument(f"{what} {value[:20]!r}...: longer than {_MAX_IDENTIFIER} characters")
    if not _IDENTIFIER.fullmatch(value):  # `$` alone would allow a trailing "\n"
        raise InvalidArgument(
            f"{what} {value!r} must be alphanumerics separated by '.', '_' or '-'"
        )
    return value


# containerd keeps a lease as a bolt bucket named by its id, and bolt's only rule for a key is
# its size (1 to 32768 bytes): ctr 1.6 names leases after paths (`ctr images mount` uses the
# target directory), so any other string is a lease id too. Ids are never file names here.
_MAX_LEASE_ID_BYTES = 32768


def lease_id(value: str) -> str:
    """Any string containerd's lease store accepts: not empty, at most 32 KiB of UTF-8."""
    if not value:
        raise InvalidArgument("lease id must not be empty")
    if len(value.encode("utf-8", "surrogatepass")) > _MAX_LEASE_ID_BYTES:
        raise InvalidArgument(f"lease id {value[:40]!r}...: longer than 32768 bytes")
    return value


def digest(value: str) -> str:
    """A content digest `sha256:<64 lowercase hex>`; other algorithms are not stored."""
    if not value:
        raise InvalidArgument("digest must not be empty")
    if not _DIGEST.fullmatch(value):
        raise InvalidArgument(f"invalid digest {value!r}: expected sha256:<64 hex characters>")
    return value


def labels(values: Mapping[str, str]) -> dict[str, str]:
    for key, value in values.items():
        if not key:
            raise InvalidArgument("label key must not be empty")
        if len(key) + len(value) > _MAX_LABEL:
            raise InvalidArgument(f"label {key[:40]!r}: key and value exceed {_MAX_LABEL} bytes")
    return dict(values)


def apply_label_mask(
    current: Mapping[str, str], new: Mapping[str, str], paths: list[str], prefix: str = "labels"
) -> dict[str, str] | None:
    """Apply an update mask's label paths; returns the new labels, or None if no path is a label.

    `labels` replaces all labels, `labels.<key>` sets (or, when absent from `new`, removes) one
    key; the key may itself contain dots and slashes.
    """
    result = dict(current)
    touched = False
    for path in paths:
        if path == prefix:
            result = dict(new)
            touched = True
        elif path.startswith(prefix + "."):
            key = path[len(prefix) + 1 :]
            if not key:
                raise InvalidArgument(f"update mask path {path!r} names no key")
            if key in new:
                result[key] = new[key]
            else:
                result.pop(key, None)
            touched = True
    return labels(result) if touched else None
