"""Layer decompression by media type, and the diff_id/size computed while reading."""

from __future__ import annotations

import gc
import gzip
import hashlib
import io
import os
import tarfile
import threading
import weakref

import pytest
import zstandard

from linerd.diff.compression import (
    SUPPORTED_MEDIA_TYPES,
    HashingReader,
    HashingThread,
    ReadAhead,
    hashed_ahead,
    open_layer,
)
from linerd.errdefs import InvalidArgument

pytestmark = pytest.mark.unit

OCI = "application/vnd.oci.image.layer.v1.tar"


def sample_tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for i in range(20):
            data = os.urandom(1000) + bytes(50_000 * (i % 3))
            info = tarfile.TarInfo(f"dir/file{i}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()  # ends in the end-of-archive blocks and record padding


TAR = sample_tar()


def compress(kind: str, data: bytes) -> bytes:
    if kind == "gzip":
        return gzip.compress(data)
    if kind == "zstd":
        # with a checksum, as the zstd CLI and Go's encoder write (else flipped bits in
        # stored blocks go unnoticed here and only the diff_id check catches them)
        return zstandard.ZstdCompressor(write_checksum=True).compress(data)
    return data


def read_all(stream: io.RawIOBase, size: int = 7919) -> bytes:
    # odd read sizes exercise the internal buffering
    parts = []
    while chunk := stream.read(size):
        parts.append(chunk)
    return b"".join(parts)


@pytest.mark.parametrize("media_type", sorted(SUPPORTED_MEDIA_TYPES))
def test_round_trip_every_media_type(media_type: str) -> None:
    blob = compress(SUPPORTED_MEDIA_TYPES[media_type], TAR)
    assert read_all(open_layer(io.BytesIO(blob), media_type)) == TAR


def test_hashing_reader_counts_padding_after_tar_end() -> None:
    hashing = HashingReader(open_layer(io.BytesIO(gzip.compress(TAR)), OCI + "+gzip"))
    with tarfile.open(fileobj=hashing, mode="r|") as tar:
        assert len([m for m in tar]) == 20
    hashing.drain()
    assert hashing.size == len(TAR)
    assert hashing.digest == "sha256:" + hashlib.sha256(TAR).hexdigest()


def test_hashing_reader_readinto() -> None:
    hashing = HashingReader(io.BytesIO(b"abcdef"))  # type: ignore[arg-type]
    buf = bytearray(4)
    assert hashing.readinto(buf) == 4 and bytes(buf) == b"abcd"
    hashing.drain()
    assert (hashing.size, hashing.digest) == (6, "sha256:" + hashlib.sha256(b"abcdef").hexdigest())


def test_multi_member_gzip_and_multi_frame_zstd() -> None:
    half = len(TAR) // 2
    gz = gzip.compress(TAR[:half]) + gzip.compress(TAR[half:])
    zs = compress("zstd", TAR[:half]) + compress("zstd", TAR[half:])
    assert read_all(open_layer(io.BytesIO(gz), OCI + "+gzip")) == TAR
    assert read_all(open_layer(io.BytesIO(zs), OCI + "+zstd")) == TAR


def test_zstd_without_content_size() -> None:
    cobj = zstandard.ZstdCompressor(write_content_size=False).compressobj()
    blob = cobj.compress(TAR) + cobj.flush()
    assert read_all(open_layer(io.BytesIO(blob), OCI + "+zstd")) == TAR


@pytest.mark.parametrize(
    ("declared", "actual"),
    [
        (OCI, "gzip"),
        (OCI, "zstd"),
        (OCI + "+gzip", "zstd"),
        (OCI + "+zstd", "gzip"),
        (OCI + "+gzip", "tar"),
    ],
)
def test_mismatched_media_type_follows_the_data(declared: str, actual: str) -> None:
    # containerd sniffs the stream the same way; such images exist and it pulls them.
    assert read_all(open_layer(io.BytesIO(compress(actual, TAR)), declared)) == TAR


def test_unknown_media_type() -> None:
    with pytest.raises(InvalidArgument, match="unsupported media type"):
        open_layer(io.BytesIO(TAR), "application/vnd.oci.image.layer.v1.tar+bzip2")
    with pytest.raises(InvalidArgument, match="unsupported media type"):
        open_layer(io.BytesIO(TAR), "application/vnd.oci.image.config.v1+json")


def _corrupt(blob: bytes) -> bytes:
    mid = len(blob) // 2
    return blob[:mid] + bytes(b ^ 0x5A for b in blob[mid : mid + 64]) + blob[mid + 64 :]


@pytest.mark.parametrize("kind", ["gzip", "zstd"])
@pytest.mark.parametrize(
    ("damage", "why"),
    [
        (lambda b: b[: len(b) // 2], "unexpected end of data"),
        (lambda b: b[:-1], "unexpected end of data"),
        (lambda b: b[:4], "unexpected end of data"),
        (_corrupt, ""),
        (lambda b: b + b"trailing garbage", ""),
    ],
    ids=["half", "last-byte", "magic-only", "flipped", "trailing"],
)
def test_damaged_streams(kind: str, damage: object, why: str) -> None:
    blob = damage(compress(kind, TAR))  # type: ignore[operator]
    name = "layer sha256:" + "ab" * 32
    stream = open_layer(io.BytesIO(blob), f"{OCI}+{kind}", name=name)
    with pytest.raises(InvalidArgument, match=rf"^{name}: corrupt {kind} stream: .*{why}"):
        read_all(stream)


@pytest.mark.parametrize("kind", ["gzip", "zstd"])
def test_read_ahead_passes_everything_through(kind: str) -> None:
    hashing = HashingReader(open_layer(io.BytesIO(compress(kind, TAR * 30)), f"{OCI}+{kind}"))
    with ReadAhead(hashing, depth=2) as ahead:  # type: ignore[arg-type]
        assert read_all(ahead) == TAR * 30
    assert hashing.digest == "sha256:" + hashlib.sha256(TAR * 30).hexdigest()


@pytest.mark.parametrize("kind", ["gzip", "zstd"])
def test_a_hashing_thread_beside_the_read_ahead_hashes_what_passed(kind: str) -> None:
    with HashingThread(depth=2) as hasher:
        stream = open_layer(io.BytesIO(compress(kind, TAR * 30)), f"{OCI}+{kind}")
        with hashed_ahead(stream, hasher) as ahead:
            assert read_all(ahead) == TAR * 30
        assert hasher.digest == "sha256:" + hashlib.sha256(TAR * 30).hexdigest()
        assert hasher.size == len(TAR) * 30


def test_a_hashing_thread_ends_with_its_block_when_the_stream_fails() -> None:
    blob = compress("gzip", TAR * 30)
    before = threading.active_count()
    with pytest.raises(InvalidArgument, match=r"^L: corrupt gzip"), HashingThread() as hasher:
        stream = open_layer(io.BytesIO(blob[: len(blob) // 2]), f"{OCI}+gzip", name="L")
        with hashed_ahead(stream, hasher) as ahead:
            read_all(ahead)
    assert not hasher._thread.is_alive()  # joined by the block's end, not left waiting
    hasher.update(b"late")  # a producer's last chunk after the end is dropped, not queued
    assert threading.active_count() <= before + 1  # the read-ahead's producer may still end


def test_read_ahead_raises_the_stream_error_where_it_happened() -> None:
    blob = compress("gzip", TAR)
    stream = open_layer(io.BytesIO(blob[: len(blob) // 2]), f"{OCI}+gzip", name="L")
    with ReadAhead(stream) as ahead, pytest.raises(InvalidArgument, match=r"^L: corrupt gzip"):  # type: ignore[arg-type]
        read_all(ahead)


def test_read_ahead_close_does_not_wait_for_a_blocked_producer() -> None:
    release = threading.Event()

    class Stalled(io.RawIOBase):
        def read(self, size: int = -1) -> bytes:
            release.wait(10)
            return b""

    ahead = ReadAhead(Stalled())  # type: ignore[arg-type]
    ahead.close()  # returns at once: the producer is stopped, not joined
    release.set()


def _frames() -> list[bytes]:
    """Frames of every shape: raw, RLE and compressed blocks, with and without a checksum and
    a content size, an empty frame, a skippable frame."""
    plain = zstandard.ZstdCompressor(write_checksum=False, write_content_size=False)
    skippable = (0x184D2A5F).to_bytes(4, "little") + (3).to_bytes(4, "little") + b"abc"
    return [
        compress("zstd", os.urandom(3000) + bytes(300_000) + TAR[:5000]),
        plain.compress(b""),
        skippable,
        plain.compress(b"x" * 70_000),
    ]


def test_zstd_frames_of_every_shape_and_every_truncation() -> None:
    frames = _frames()
    blob = b"".join(frames)
    want = zstandard.ZstdDecompressor().stream_reader(blob, read_across_frames=True).read()
    assert read_all(open_layer(io.BytesIO(blob), OCI + "+zstd")) == want
    ends = {sum(map(len, frames[: i + 1])) for i in range(len(frames))}
    for cut in set(range(5, len(blob))) - ends:  # a stream may end after any whole frame
        stream = open_layer(io.BytesIO(blob[:cut]), OCI + "+zstd")
        with pytest.raises(InvalidArgument, match="corrupt zstd stream"):
            read_all(stream)
            pytest.fail(f"cut at {cut} of {len(blob)} went unnoticed")


@pytest.mark.parametrize("media_type", sorted(SUPPORTED_MEDIA_TYPES))
def test_a_finished_reader_is_freed(media_type: str) -> None:
    # A reference cycle through zstandard's reader (a C object the garbage collector cannot
    # traverse) leaked its buffers, ~2 MB per zstd layer, for the daemon's lifetime.
    reader = open_layer(io.BytesIO(compress(SUPPORTED_MEDIA_TYPES[media_type], TAR)), media_type)
    assert read_all(reader) == TAR
    gone = weakref.ref(reader)
    del reader
    gc.collect()
    assert gone() is None
