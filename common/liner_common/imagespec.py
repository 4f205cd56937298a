"""Small pieces of the OCI image spec both sides compute: chain IDs and platform strings."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from liner_common.errors import InvalidArgument
from liner_common.platforms import Platform


def parse_platform(text: str) -> Platform:
    """`linux/amd64`, `linux/arm64/v8`, or just `arm64` (os linux)."""
    parts = text.strip().split("/")
    if not text.strip() or len(parts) > 3 or any(not p for p in parts):
        raise InvalidArgument(f"invalid platform {text!r}: want os/arch[/variant]")
    if len(parts) == 1:
        return Platform("linux", parts[0]).normalized()
    return Platform(*parts).normalized()


def chain_ids(diff_ids: Sequence[str]) -> list[str]:
    """C1 = D1; Ci = sha256("C(i-1) Di")."""
    chain: list[str] = []
    for diff_id in diff_ids:
        if not chain:
            chain.append(diff_id)
        else:
            joined = f"{chain[-1]} {diff_id}".encode()
            chain.append("sha256:" + hashlib.sha256(joined).hexdigest())
    return chain
