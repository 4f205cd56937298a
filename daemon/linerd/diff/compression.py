"""Layer blob decompression and the diff_id hash.

`open_layer` turns a layer blob into its uncompressed tar stream; `HashingReader` counts and
hashes what is read through it, which is how the applied descriptor (diff_id, size) is computed.

The media type decides whether a layer is *supported*; the data's magic bytes decide the codec.
That is containerd's behaviour (its DecompressStream sniffs the stream), and images whose layer
media type does not match their bytes exist in the wild, so a mismatch is tolerated rather than
refused. Anything that is neither gzip nor zstd is taken as a plain tar, whose parser then
reports garbage.
"""

from __future__ import annotations

import hashlib
import io
import queue
import threading
from typing import BinaryIO

import zstandard
from isal import isal_zlib

from linerd.errdefs import InvalidArgument

MEDIA_TYPE_LAYER = "application/vnd.oci.image.layer.v1.tar"

_PLAIN = "tar"
_GZIP = "gzip"
_ZSTD = "zstd"

# What each supported media type claims; only used to refuse unknown types and in messages.
SUPPORTED_MEDIA_TYPES: dict[str, str] = {
    "application/vnd.oci.image.layer.v1.tar": _PLAIN,
    "application/vnd.oci.image.layer.v1.tar+gzip": _GZIP,
    "application/vnd.oci.image.layer.v1.tar+zstd": _ZSTD,
    "application/vnd.oci.image.layer.nondistributable.v1.tar": _PLAIN,
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": _GZIP,
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd": _ZSTD,
    "application/vnd.docker.image.rootfs.diff.tar": _PLAIN,  # containerd's Docker-archive import
    "application/vnd.docker.image.rootfs.diff.tar.gzip": _GZIP,
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip": _GZIP,
}

_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_CHUNK = 1 << 20


def sniff(head: bytes) -> str:
    """The codec the first bytes of a stream announce: "gzip", "zstd" or "tar"."""
    if head.startswith(_GZIP_MAGIC):
        return _GZIP
    if head.startswith(_ZSTD_MAGIC):
        return _ZSTD
    return _PLAIN


def open_layer(raw: BinaryIO, media_type: str, *, name: str = "layer") -> BinaryIO:
    """A readable stream of the uncompressed tar inside a layer blob.

    `name` prefixes error messages (the daemon passes ``f"layer {digest}"``). Unknown media
    types raise InvalidArgument at once; corrupt data raises InvalidArgument from `read`.
    """
    if media_type not in SUPPORTED_MEDIA_TYPES:
        raise InvalidArgument(f"{name}: unsupported media type {media_type!r}")
    head = _read_exactly(raw, 4)
    codec = sniff(head)
    source = _Prefixed(head, raw)
    if codec == _GZIP:
        return _GzipReader(source, name)  # type: ignore[return-value]
    if codec == _ZSTD:
        return _ZstdReader(source, name)  # type: ignore[return-value]
    return source  # type: ignore[return-value]


def _read_exactly(raw: BinaryIO, n: int) -> bytes:
    out = b""
    while len(out) < n:
        data = raw.read(n - len(out))
        if not data:
            break
        out += data
    return out


class _Prefixed(io.RawIOBase):
    """`raw` with some already-read bytes put back in front (the sniffed magic)."""

    def __init__(self, head: bytes, raw: BinaryIO) -> None:
        self._head = head
        self._raw = raw

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if self._head:
            if size is None or size < 0:
                data = self._head + self._raw.read()
                self._head = b""
                return data
            data, self._head = self._head[:size], self._head[size:]
            return data
        return self._raw.read() if size is None or size < 0 else self._raw.read(size)

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)


class _GzipReader(io.RawIOBase):
    """Streaming gzip decompression (multi-member, like Go's gzip reader).

    ISA-L's inflate is ~2.3x zlib's here (0.30 vs 0.76 s for a 180 MB layer) and, like zlib,
    releases the GIL, so several layers decompress in parallel threads; gzip.GzipFile's extra
    buffering and per-call checks are avoided.
    """

    def __init__(self, raw: io.RawIOBase, name: str) -> None:
        self._raw = raw
        self._name = name
        self._z = isal_zlib.decompressobj(wbits=31)
        self._pending = b""  # compressed input not yet fed to self._z
        self._eof = False

    def readable(self) -> bool:
        return True

    def _fail(self, why: str) -> InvalidArgument:
        return InvalidArgument(f"{self._name}: corrupt gzip stream: {why}")

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            parts = []
            while chunk := self.read(_CHUNK):
                parts.append(chunk)
            return b"".join(parts)
        while not self._eof:
            if not self._pending:
                self._pending = self._raw.read(_CHUNK) or b""
                if not self._pending:
                    raise self._fail("unexpected end of data")
            try:
                out = self._z.decompress(self._pending, size)
            except isal_zlib.error as e:
                raise self._fail(str(e)) from None
            self._pending = self._z.unconsumed_tail
            if self._z.eof:
                self._next_member()
            if out:
                return out
        return b""

    def _next_member(self) -> None:
        rest = self._z.unused_data
        if not rest:
            rest = self._raw.read(_CHUNK) or b""
        if not rest:
            self._eof = True
            return
        if not rest.startswith(_GZIP_MAGIC[: len(rest)]):
            raise self._fail("trailing garbage after the last member")
        self._z = isal_zlib.decompressobj(wbits=31)
        self._pending = rest

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)


class _ZstdReader(io.RawIOBase):
    """Streaming zstd decompression over any number of frames.

    zstandard's stream_reader and read_to_iter end silently on a truncated frame, so this
    drives a decompressobj and checks that the last frame ended. Its output per call is not
    bounded, so input goes in small slices: a 4-byte RLE block can expand to 128 KiB, so at
    most ~128 MiB comes out of one slice of a hostile stream, a few times the slice of a real
    layer.
    """

    _SLICE = 8 << 10

    def __init__(self, raw: io.RawIOBase, name: str) -> None:
        self._raw = raw
        self._name = name
        self._dctx = zstandard.ZstdDecompressor()
        self._z = self._dctx.decompressobj()
        self._input = b""
        self._pos = 0
        self._out = b""
        self._eof = False
        self._in_frame = False  # the current decompressobj has been fed part of a frame

    def readable(self) -> bool:
        return True

    def _fail(self, why: str) -> InvalidArgument:
        return InvalidArgument(f"{self._name}: corrupt zstd stream: {why}")

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            parts = []
            while chunk := self.read(_CHUNK):
                parts.append(chunk)
            return b"".join(parts)
        while not self._out and not self._eof:
            self._fill()
        out, self._out = self._out[:size], self._out[size:]
        return out

    def _fill(self) -> None:
        if self._pos >= len(self._input):
            self._input = self._raw.read(_CHUNK) or b""
            self._pos = 0
            if not self._input:
                if self._in_frame:
                    raise self._fail("unexpected end of data")
                self._eof = True
                return
        piece = self._input[self._pos : self._pos + self._SLICE]
        self._pos += len(piece)
        self._in_frame = True
        try:
            self._out = self._z.decompress(piece)
        except zstandard.ZstdError as e:
            raise self._fail(str(e)) from None
        if self._z.eof:
            # The frame ended inside this slice: the rest belongs to the next frame.
            rest = self._z.unused_data
            self._pos -= len(rest)
            self._z = self._dctx.decompressobj()
            self._in_frame = False

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)


class HashingReader(io.RawIOBase):
    """Passes reads through, counting bytes and hashing them with sha256.

    After the tar's end-of-archive marker, call `drain` so that the trailing padding counts:
    the diff_id is the digest of the whole uncompressed stream.
    """

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._hash = hashlib.sha256()
        self.size = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read() if size is None or size < 0 else self._stream.read(size)
        if data:
            self._hash.update(data)
            self.size += len(data)
        return data

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def drain(self) -> None:
        while self.read(_CHUNK):
            pass

    @property
    def digest(self) -> str:
        return "sha256:" + self._hash.hexdigest()


class ReadAhead(io.RawIOBase):
    """Reads `stream` in a thread of its own, `depth` chunks ahead of the consumer.

    Decompression and hashing (both release the GIL) then run on one core while extraction
    runs on another. Errors of the stream are raised to the consumer at the point they
    happened. `close` stops the thread without waiting for it: it may be blocked on a
    download that the failing pull is about to cancel.
    """

    def __init__(self, stream: BinaryIO, depth: int = 8) -> None:
        self._queue: queue.Queue[bytes | BaseException] = queue.Queue(depth)
        self._stop = threading.Event()
        self._head = b""
        self._eof = False
        threading.Thread(target=self._produce, args=(stream,), daemon=True).start()

    def _produce(self, stream: BinaryIO) -> None:
        try:
            while not self._stop.is_set():
                # Whole chunks: the zstd reader yields ~100 KiB per read, and each queue
                # hand-over costs a GIL round trip.
                parts: list[bytes] = []
                size = 0
                while size < _CHUNK and (chunk := stream.read(_CHUNK - size)):
                    parts.append(chunk)
                    size += len(chunk)
                if parts:
                    self._put(parts[0] if len(parts) == 1 else b"".join(parts))
                if size < _CHUNK:
                    self._put(b"")
                    return
        except BaseException as e:  # handed to the consumer
            self._put(e)

    def _put(self, item: bytes | BaseException) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            parts = []
            while chunk := self.read(_CHUNK):
                parts.append(chunk)
            return b"".join(parts)
        if not self._head:
            if self._eof:
                return b""
            item = self._queue.get()
            if isinstance(item, BaseException):
                self._eof = True
                raise item
            if not item:
                self._eof = True
                return b""
            self._head = item
        if size >= len(self._head):
            data, self._head = self._head, b""
        else:
            data, self._head = self._head[:size], self._head[size:]
        return data

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._stop.set()
        super().close()
