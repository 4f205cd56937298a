"""Reading image documents from the content store: bounded, and checked against the digest."""

from __future__ import annotations

import asyncio
import hashlib
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from linerd.content import documents
from linerd.core.types import ContentInfo, Descriptor
from linerd.errdefs import DataLoss, FailedPrecondition, InvalidArgument, NotFound

pytestmark = pytest.mark.unit

MANIFEST = "application/vnd.oci.image.manifest.v1+json"


class _Store:
    """The two things the reader uses: a record per digest, and the blob's file."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.sizes: dict[str, int] = {}
        self.local = SimpleNamespace(path=lambda digest: root / digest.replace(":", "-"))

    def put(self, data: bytes, *, stored: bytes | None = None) -> Descriptor:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        self.local.path(digest).write_bytes(data if stored is None else stored)
        self.sizes[digest] = len(data)
        return Descriptor(MANIFEST, digest, len(data))

    async def info(self, namespace: str, digest: str) -> ContentInfo:
        if digest not in self.sizes:
            raise NotFound(f"content {digest} not found")
        now = datetime.now(UTC)
        return ContentInfo(digest, self.sizes[digest], now, now)


def _read(store: _Store, desc: Descriptor) -> bytes:
    content: Any = store
    return asyncio.run(documents.read_document(content, "ns", desc, "manifest"))


def test_reads_a_document_whose_bytes_match(tmp_path: Path) -> None:
    store = _Store(tmp_path)
    desc = store.put(b'{"schemaVersion":2}')
    assert _read(store, desc) == b'{"schemaVersion":2}'


def test_refuses_a_document_over_the_limit_before_reading(tmp_path: Path) -> None:
    store = _Store(tmp_path)
    big = Descriptor(MANIFEST, "sha256:" + "a" * 64, documents.MAX_DOCUMENT + 1)
    with pytest.raises(InvalidArgument, match="over the"):
        _read(store, big)  # no record, no file: the size alone decides
    at_limit = store.put(b"x" * documents.MAX_DOCUMENT)
    assert len(_read(store, at_limit)) == documents.MAX_DOCUMENT


def test_bytes_that_do_not_hash_to_the_digest_are_data_loss(tmp_path: Path) -> None:
    store = _Store(tmp_path)
    desc = store.put(b'{"a":1}', stored=b'{"a":2}')  # same size, other bytes
    with pytest.raises(DataLoss, match="do not match the digest"):
        _read(store, desc)


def test_a_cut_file_is_data_loss(tmp_path: Path) -> None:
    store = _Store(tmp_path)
    desc = store.put(b'{"a":1}', stored=b'{"a"')
    with pytest.raises(DataLoss, match="expected 7"):
        _read(store, desc)


def test_missing_and_mis_sized_records(tmp_path: Path) -> None:
    store = _Store(tmp_path)
    with pytest.raises(NotFound, match="not in the content store"):
        _read(store, Descriptor(MANIFEST, "sha256:" + "b" * 64, 10))
    desc = store.put(b"{}")
    with pytest.raises(FailedPrecondition, match="its descriptor says 3"):
        _read(store, Descriptor(MANIFEST, desc.digest, 3))
