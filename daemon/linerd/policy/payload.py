"""The signed JSON claims of simple signing and of cosign, parsed strictly.

Both formats are ``{"critical": {"identity": {"docker-reference": R}, "image":
{"docker-manifest-digest": D}, "type": T}, "optional": ...}`` with exactly those critical
fields; only ``critical.type`` differs.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

from linerd.policy import boundedjson

SIMPLE_SIGNING_TYPE = "atomic container signature"
COSIGN_TYPE = "cosign container image signature"
MAX_PAYLOAD_BYTES = 4 << 20
_DIGEST_LENGTHS = {"sha256": 64, "sha384": 96, "sha512": 128}


class PayloadError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Claims:
    docker_reference: str
    manifest_digest: str


def _valid_digest(value: str) -> bool:
    algorithm, _, encoded = value.partition(":")
    length = _DIGEST_LENGTHS.get(algorithm)
    return (
        length is not None and len(encoded) == length and bool(re.fullmatch(r"[a-f0-9]+", encoded))
    )


def parse_claims(data: bytes, expected_type: str) -> Claims:
    """The claims of ``data``; PayloadError says what is wrong (nothing is trusted yet)."""
    try:
        doc = boundedjson.loads(data, max_bytes=MAX_PAYLOAD_BYTES)
        top = boundedjson.exact_fields(doc, "payload", {"critical", "optional"})
        critical = boundedjson.exact_fields(
            top["critical"], "payload critical", {"type", "image", "identity"}
        )
        image = boundedjson.exact_fields(
            critical["image"], "payload critical.image", {"docker-manifest-digest"}
        )
        identity = boundedjson.exact_fields(
            critical["identity"], "payload critical.identity", {"docker-reference"}
        )
    except boundedjson.JSONRefused as e:
        raise PayloadError(str(e)) from None
    kind = critical["type"]
    if kind != expected_type:
        raise PayloadError(f"unrecognized signature type {kind!r}")
    optional: Any = top["optional"]
    if optional is not None and not isinstance(optional, dict):
        raise PayloadError("payload optional is not a JSON object")
    if expected_type == SIMPLE_SIGNING_TYPE and isinstance(optional, dict):
        if "creator" in optional and not isinstance(optional["creator"], str):
            raise PayloadError("payload optional.creator is not a string")
        timestamp = optional.get("timestamp")
        if timestamp is not None and (
            isinstance(timestamp, bool)
            or not isinstance(timestamp, int | float)
            or int(timestamp) != timestamp
        ):
            raise PayloadError("payload optional.timestamp is not an integer")
    digest = image["docker-manifest-digest"]
    if not isinstance(digest, str) or not _valid_digest(digest):
        raise PayloadError(f"invalid docker-manifest-digest value {digest!r}")
    reference = identity["docker-reference"]
    if not isinstance(reference, str):
        raise PayloadError("critical.identity.docker-reference is not a string")
    return Claims(reference, digest)


def digest_matches(claimed: str, manifest_digest: str, manifest: bytes | None) -> bool:
    """Whether the signed digest names the manifest that was pulled.

    Compared as strings when the algorithms agree; otherwise the manifest bytes (when the
    caller has them) are hashed with the signature's algorithm.
    """
    if claimed == manifest_digest:
        return True
    algorithm = claimed.partition(":")[0]
    if manifest is None or algorithm == manifest_digest.partition(":")[0]:
        return False
    return f"{algorithm}:{hashlib.new(algorithm, manifest).hexdigest()}" == claimed
