"""The Content service's memory of small blobs stays within its byte budget."""

from __future__ import annotations

import pytest

from linerd.local.content import SmallBlobs

pytestmark = pytest.mark.unit


def test_small_blobs_bounded_oldest_first() -> None:
    blobs = SmallBlobs(total=10)
    blobs.put("a", b"1234")
    blobs.put("b", b"5678")
    assert blobs.get("a") == b"1234"
    blobs.put("c", b"90ab")  # 12 > 10: "a" goes
    assert blobs.get("a") is None
    assert (blobs.get("b"), blobs.get("c")) == (b"5678", b"90ab")
    blobs.put("huge", b"x" * 11)  # larger than the budget: not kept, nothing evicted
    assert blobs.get("huge") is None and blobs.get("b") == b"5678"
