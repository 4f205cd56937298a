"""signedIdentity matching, as containers/image's policy_reference_match.go defines it."""

from __future__ import annotations

import pytest

from linerd.policy.identity import (
    ExactReference,
    ExactRepository,
    MatchExact,
    MatchRepoDigestOrExact,
    MatchRepository,
    RemapIdentity,
)
from linerd.policy.refs import from_pulled

pytestmark = pytest.mark.unit

D = "sha256:" + "b" * 64
TAGGED = from_pulled("example.com/ns/app:v1")
DIGESTED = from_pulled(f"example.com/ns/app@{D}")


@pytest.mark.parametrize(
    ("identity", "intended", "signed", "expected"),
    [
        (MatchRepoDigestOrExact(), TAGGED, "example.com/ns/app:v1", True),
        (MatchRepoDigestOrExact(), TAGGED, "example.com/ns/app:v2", False),
        (MatchRepoDigestOrExact(), TAGGED, "example.com/ns/app", False),
        (MatchRepoDigestOrExact(), DIGESTED, "example.com/ns/app:any", True),
        (MatchRepoDigestOrExact(), DIGESTED, "example.com/ns/other:any", False),
        (MatchRepoDigestOrExact(), DIGESTED, "example.com/ns/app", False),
        (MatchRepoDigestOrExact(), from_pulled("busybox"), "busybox:latest", True),
        (MatchExact(), TAGGED, "example.com/ns/app:v1", True),
        (MatchExact(), DIGESTED, "example.com/ns/app:v1", False),
        (MatchExact(), DIGESTED, f"example.com/ns/app@{D}", True),
        (MatchRepository(), TAGGED, "example.com/ns/app:v9", True),
        (MatchRepository(), TAGGED, "example.com/ns/app", True),
        (MatchRepository(), TAGGED, "example.com/ns/other:v1", False),
        (MatchRepository(), TAGGED, "not a reference", False),
        (ExactReference("vendor.io/app:1"), TAGGED, "vendor.io/app:1", True),
        (ExactReference("vendor.io/app:1"), TAGGED, "vendor.io/app:2", False),
        (ExactRepository("vendor.io/app"), TAGGED, "vendor.io/app:2", True),
        (ExactRepository("vendor.io/app"), TAGGED, "vendor.io/other:2", False),
        (RemapIdentity("example.com/ns", "vendor.io"), TAGGED, "vendor.io/app:v1", True),
        (RemapIdentity("example.com/ns", "vendor.io"), TAGGED, "vendor.io/app:v2", False),
        (RemapIdentity("example.com/ns", "vendor.io"), DIGESTED, "vendor.io/app:x", True),
        # Not under the prefix: no remapping, plain matchRepoDigestOrExact.
        (RemapIdentity("example.com/n", "vendor.io"), TAGGED, "example.com/ns/app:v1", True),
        (RemapIdentity("example.com", "docker.io"), TAGGED, "docker.io/ns/app:v1", True),
        (RemapIdentity("example.com", "docker.io"), TAGGED, "ns/app:v1", True),
    ],
)
def test_matches(identity: object, intended: object, signed: str, expected: bool) -> None:
    assert identity.matches(intended, signed) is expected  # type: ignore[attr-defined]
