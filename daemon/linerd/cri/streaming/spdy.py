"""SPDY/3.1 framing, sans-IO: frames to bytes and bytes to frames, nothing else.

Kubernetes' streaming clients (client-go through moby/spdystream) speak SPDY/3.1 after an
HTTP upgrade. This module knows the frame layouts of the SPDY/3.1 draft (section 2) and the
compressed name/value header block (2.6.10); it owns no socket, so the streaming server can
drive it from asyncio. One `FrameEncoder` and one `FrameDecoder` per connection: each holds
the single zlib stream of its direction that every header block of the connection shares.

Everything a peer controls is bounded before it is buffered or inflated (`Limits`): a frame
whose length exceeds the limit is refused from its 8-byte header alone, and a header block
is inflated at most one byte past its limit.
"""

from __future__ import annotations

import enum
import struct
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from linerd import errdefs

VERSION = 3
HEADER_SIZE = 8
MAX_LENGTH = 0xFFFFFF  # the 24-bit length field
MAX_STREAM_ID = 0x7FFFFFFF  # 31 bits; the top bit is reserved (or the control bit)

FLAG_FIN = 0x01
FLAG_UNIDIRECTIONAL = 0x02  # SYN_STREAM only
FLAG_SETTINGS_CLEAR_SETTINGS = 0x01  # on the SETTINGS frame
FLAG_SETTINGS_PERSIST_VALUE = 0x01  # on one SETTINGS entry
FLAG_SETTINGS_PERSISTED = 0x02  # on one SETTINGS entry


class FrameType(enum.IntEnum):
    SYN_STREAM = 1
    SYN_REPLY = 2
    RST_STREAM = 3
    SETTINGS = 4
    PING = 6
    GOAWAY = 7
    HEADERS = 8
    WINDOW_UPDATE = 9


class RstStatus(enum.IntEnum):
    PROTOCOL_ERROR = 1
    INVALID_STREAM = 2
    REFUSED_STREAM = 3
    UNSUPPORTED_VERSION = 4
    CANCEL = 5
    INTERNAL_ERROR = 6
    FLOW_CONTROL_ERROR = 7
    STREAM_IN_USE = 8
    STREAM_ALREADY_CLOSED = 9
    FRAME_TOO_LARGE = 11


class GoAwayStatus(enum.IntEnum):
    OK = 0
    PROTOCOL_ERROR = 1
    INTERNAL_ERROR = 2


class SettingId(enum.IntEnum):
    UPLOAD_BANDWIDTH = 1
    DOWNLOAD_BANDWIDTH = 2
    ROUND_TRIP_TIME = 3
    MAX_CONCURRENT_STREAMS = 4
    CURRENT_CWND = 5
    DOWNLOAD_RETRANS_RATE = 6
    INITIAL_WINDOW_SIZE = 7
    CLIENT_CERTIFICATE_VECTOR_SIZE = 8


def _dictionary() -> bytes:
    """The zlib dictionary of SPDY/3 (draft 3, section 2.6.10.1), rebuilt from its parts.

    The spec prints it as a byte table: first common header names and values, each behind a
    4-byte big-endian length (as they sit in a header block), then raw text: status codes,
    reason phrases, date fragments and common values. Checked by length and adler32.
    """
    names = (
        "options head post put delete trace accept accept-charset accept-encoding "
        "accept-language accept-ranges age allow authorization cache-control connection "
        "content-base content-encoding content-language content-length content-location "
        "content-md5 content-range content-type date etag expect expires from host if-match "
        "if-modified-since if-none-match if-range if-unmodified-since last-modified location "
        "max-forwards pragma proxy-authenticate proxy-authorization range referer retry-after "
        "server te trailer transfer-encoding upgrade user-agent vary via warning "
        "www-authenticate method get status"
    )
    words = names.split()
    # "200 OK" holds a space, so it cannot ride in the split list above.
    words += ["200 OK", "version", "HTTP/1.1", "url", "public", "set-cookie", "keep-alive"]
    words += ["origin"]
    prefixed = b"".join(struct.pack(">I", len(w)) + w.encode("ascii") for w in words)
    # Status codes without reason phrases, packed without separators.
    codes = (
        "100 101 201 202 205 206 300 302 303 304 305 306 307 402 405 406 407 408 409 410 "
        "411 412 413 414 415 416 417 502 504 505"
    )
    phrases = (
        "203 Non-Authoritative Information",
        "204 No Content",
        "301 Moved Permanently",
        "400 Bad Request",
        "401 Unauthorized",
        "403 Forbidden",
        "404 Not Found",
        "500 Internal Server Error",
        "501 Not Implemented",
        "503 Service Unavailable",
    )
    dates = (
        "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 "
        "Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT"
    )
    values = (
        "chunked,text/html,image/png,image/jpg,image/gif,application/xml,"
        "application/xhtml+xml,text/plain,text/javascript,public"
        "private"
        "max-age="
        "gzip,deflate,sdch"
        "charset=utf-8"
        "charset=iso-8859-1,utf-,*,enq=0."
    )
    tail = codes.replace(" ", "") + "".join(phrases) + dates + values
    return prefixed + tail.encode("ascii")


DICTIONARY = _dictionary()
DICTIONARY_ADLER32 = 0xE3C6A7C2
if len(DICTIONARY) != 1423 or zlib.adler32(DICTIONARY) != DICTIONARY_ADLER32:  # pragma: no cover
    raise AssertionError("SPDY/3 header dictionary does not match the spec")


# --- errors --------------------------------------------------------------------------------


class SpdyError(errdefs.InvalidArgument):
    """The peer broke the SPDY/3.1 framing rules."""


class SessionError(SpdyError):
    """The connection cannot go on: send GOAWAY with `status`, then close it."""

    def __init__(self, message: str, status: GoAwayStatus = GoAwayStatus.PROTOCOL_ERROR):
        super().__init__(message)
        self.status = status


class StreamError(SpdyError):
    """One stream is wrong: send RST_STREAM with `status`; the connection goes on."""

    def __init__(self, message: str, stream_id: int, status: RstStatus):
        super().__init__(message)
        self.stream_id = stream_id
        self.status = status


# --- frames --------------------------------------------------------------------------------

# A header block as ordered (name, value) pairs. A name may repeat: on the wire its values
# travel NUL-joined under one name, in the order given.
Headers = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class DataFrame:
    stream_id: int
    data: bytes = b""
    flags: int = 0

    @property
    def fin(self) -> bool:
        return bool(self.flags & FLAG_FIN)


@dataclass(frozen=True, slots=True)
class SynStream:
    stream_id: int
    headers: Headers = ()
    associated_to: int = 0
    priority: int = 0  # 0 (highest) to 7
    slot: int = 0
    flags: int = 0

    @property
    def fin(self) -> bool:
        return bool(self.flags & FLAG_FIN)


@dataclass(frozen=True, slots=True)
class SynReply:
    stream_id: int
    headers: Headers = ()
    flags: int = 0

    @property
    def fin(self) -> bool:
        return bool(self.flags & FLAG_FIN)


@dataclass(frozen=True, slots=True)
class RstStream:
    stream_id: int
    status: int


@dataclass(frozen=True, slots=True)
class SettingsEntry:
    id: int
    value: int
    flags: int = 0


@dataclass(frozen=True, slots=True)
class Settings:
    entries: tuple[SettingsEntry, ...] = ()
    flags: int = 0


@dataclass(frozen=True, slots=True)
class Ping:
    ping_id: int


@dataclass(frozen=True, slots=True)
class GoAway:
    last_good_stream_id: int
    status: int = GoAwayStatus.OK


@dataclass(frozen=True, slots=True)
class HeadersFrame:
    stream_id: int
    headers: Headers = ()
    flags: int = 0

    @property
    def fin(self) -> bool:
        return bool(self.flags & FLAG_FIN)


@dataclass(frozen=True, slots=True)
class WindowUpdate:
    stream_id: int  # 0 = the whole connection (SPDY/3.1)
    delta: int


@dataclass(frozen=True, slots=True)
class UnknownControlFrame:
    """A control frame of a type this module does not know; the spec says to ignore it."""

    type: int
    flags: int
    payload: bytes


Frame = (
    DataFrame
    | SynStream
    | SynReply
    | RstStream
    | Settings
    | Ping
    | GoAway
    | HeadersFrame
    | WindowUpdate
    | UnknownControlFrame
)


@dataclass(frozen=True, slots=True)
class Limits:
    """What a decoder accepts from its peer. Kubernetes' peers send data frames of at most
    32 KiB (Go's copy buffer; measured with crictl 1.29) and header blocks of a few short
    pairs, so these leave ample room."""

    max_data_payload: int = 1 << 20
    max_control_payload: int = 64 << 10  # the spec asks for at least 8192
    max_header_block: int = 64 << 10  # inflated size of one header block
    max_headers: int = 256  # name/value pairs in one block


# --- header blocks -------------------------------------------------------------------------


def _block_bytes(headers: Iterable[tuple[str, str]]) -> bytes:
    """The uncompressed name/value block, same-name values NUL-joined in order."""
    merged: dict[str, list[str]] = {}
    for name, value in headers:
        if not name:
            raise ValueError("empty header name")
        merged.setdefault(name.lower(), []).append(value)
    out = [struct.pack(">I", len(merged))]
    for name, values in merged.items():
        raw_name = name.encode("ascii")
        raw_value = b"\0".join(v.encode("utf-8") for v in values)
        if b"\0" in raw_name or any("\0" in v for v in values):
            raise ValueError("NUL inside a header name or value")
        out += [struct.pack(">I", len(raw_name)), raw_name]
        out += [struct.pack(">I", len(raw_value)), raw_value]
    return b"".join(out)


def _parse_block(block: bytes, stream_id: int, max_headers: int) -> Headers:
    """Split an inflated header block into pairs, checking it as the spec demands."""
    view = memoryview(block)
    if len(view) < 4:
        raise StreamError("header block too short", stream_id, RstStatus.PROTOCOL_ERROR)
    (count,) = struct.unpack_from(">I", view, 0)
    # Every pair takes at least 8 bytes (two lengths): a count that cannot fit is refused
    # before anything is built from it.
    if count > max_headers or count * 8 > len(view) - 4:
        raise StreamError(f"header block claims {count} pairs", stream_id, RstStatus.PROTOCOL_ERROR)
    pos = 4
    pairs: list[tuple[str, str]] = []
    seen: set[str] = set()

    def take() -> bytes:
        nonlocal pos
        if pos + 4 > len(view):
            raise StreamError("header block truncated", stream_id, RstStatus.PROTOCOL_ERROR)
        (length,) = struct.unpack_from(">I", view, pos)
        pos += 4
        if length > len(view) - pos:
            raise StreamError("header block truncated", stream_id, RstStatus.PROTOCOL_ERROR)
        chunk = bytes(view[pos : pos + length])
        pos += length
        return chunk

    for _ in range(count):
        raw_name = take()
        raw_value = take()
        try:
            name = raw_name.decode("ascii")
            value = raw_value.decode("utf-8")
        except UnicodeDecodeError:
            raise StreamError(
                "header not ASCII/UTF-8", stream_id, RstStatus.PROTOCOL_ERROR
            ) from None
        if not name or name != name.lower() or "\0" in name:
            raise StreamError(f"bad header name {name!r}", stream_id, RstStatus.PROTOCOL_ERROR)
        if name in seen:
            raise StreamError(f"duplicate header {name!r}", stream_id, RstStatus.PROTOCOL_ERROR)
        seen.add(name)
        values = value.split("\0") if value else [""]
        if len(values) > 1 and not all(values):
            raise StreamError(
                f"empty value in header {name!r}", stream_id, RstStatus.PROTOCOL_ERROR
            )
        pairs += [(name, v) for v in values]
    if pos != len(view):
        raise StreamError("bytes after the header block", stream_id, RstStatus.PROTOCOL_ERROR)
    return tuple(pairs)


# --- encoding ------------------------------------------------------------------------------


def _control(frame_type: int, flags: int, payload: bytes) -> bytes:
    if len(payload) > MAX_LENGTH:
        raise ValueError("control frame too long")
    return struct.pack(">HHI", 0x8000 | VERSION, frame_type, flags << 24 | len(payload)) + payload


def _check_id(value: int, what: str, *, zero: bool = False) -> None:
    if not (0 if zero else 1) <= value <= MAX_STREAM_ID:
        raise ValueError(f"{what} {value} out of range")


class FrameEncoder:
    """Turns frames into bytes for one direction of one connection.

    Holds the compressor every header block of this direction shares (level 9 and a full
    window, as spdystream; each block ends with a sync flush so the peer can inflate it
    whole). Encode frames in the order they are sent.
    """

    def __init__(self) -> None:
        self._zlib = zlib.compressobj(9, zlib.DEFLATED, 15, zdict=DICTIONARY)

    def compress_headers(self, headers: Iterable[tuple[str, str]]) -> bytes:
        raw = _block_bytes(headers)
        return self._zlib.compress(raw) + self._zlib.flush(zlib.Z_SYNC_FLUSH)

    def encode(self, frame: Frame) -> bytes:
        match frame:
            case DataFrame(stream_id, data, flags):
                _check_id(stream_id, "stream id")
                if len(data) > MAX_LENGTH:
                    raise ValueError("data frame too long")
                return struct.pack(">II", stream_id, (flags & 0xFF) << 24 | len(data)) + data
            case SynStream(stream_id, headers, associated_to, priority, slot, flags):
                _check_id(stream_id, "stream id")
                _check_id(associated_to, "associated stream id", zero=True)
                if not 0 <= priority <= 7 or not 0 <= slot <= 0xFF:
                    raise ValueError("priority or slot out of range")
                fixed = struct.pack(">IIBB", stream_id, associated_to, priority << 5, slot)
                block = self.compress_headers(headers)
                return _control(FrameType.SYN_STREAM, flags, fixed + block)
            case SynReply(stream_id, headers, flags):
                _check_id(stream_id, "stream id")
                block = self.compress_headers(headers)
                return _control(FrameType.SYN_REPLY, flags, struct.pack(">I", stream_id) + block)
            case RstStream(stream_id, status):
                _check_id(stream_id, "stream id")
                return _control(FrameType.RST_STREAM, 0, struct.pack(">II", stream_id, status))
            case Settings(entries, flags):
                body = [struct.pack(">I", len(entries))]
                for entry in entries:
                    if not 0 <= entry.id <= 0xFFFFFF:
                        raise ValueError("setting id out of range")
                    body.append(struct.pack(">II", entry.flags << 24 | entry.id, entry.value))
                return _control(FrameType.SETTINGS, flags, b"".join(body))
            case Ping(ping_id):
                return _control(FrameType.PING, 0, struct.pack(">I", ping_id))
            case GoAway(last_good, status):
                _check_id(last_good, "last good stream id", zero=True)
                return _control(FrameType.GOAWAY, 0, struct.pack(">II", last_good, status))
            case HeadersFrame(stream_id, headers, flags):
                _check_id(stream_id, "stream id")
                block = self.compress_headers(headers)
                return _control(FrameType.HEADERS, flags, struct.pack(">I", stream_id) + block)
            case WindowUpdate(stream_id, delta):
                _check_id(stream_id, "stream id", zero=True)
                _check_id(delta, "window delta")
                return _control(FrameType.WINDOW_UPDATE, 0, struct.pack(">II", stream_id, delta))
            case UnknownControlFrame(frame_type, flags, payload):
                return _control(frame_type, flags, payload)
        raise TypeError(f"not a SPDY frame: {frame!r}")


# --- decoding ------------------------------------------------------------------------------


_FIXED_LENGTH = {FrameType.RST_STREAM: 8, FrameType.PING: 4, FrameType.GOAWAY: 8}
_FIXED_LENGTH[FrameType.WINDOW_UPDATE] = 8
_MIN_LENGTH = {FrameType.SYN_STREAM: 10, FrameType.SYN_REPLY: 4, FrameType.HEADERS: 4}
_MIN_LENGTH[FrameType.SETTINGS] = 4


@dataclass
class FrameDecoder:
    """Turns the bytes of one direction of one connection into frames, incrementally.

    `feed` bytes as they arrive, then call `next_frame` until it answers None (or iterate
    `frames()`). A `StreamError` leaves the decoder past the offending frame, so the caller
    resets that stream and carries on; after a `SessionError` the decoder refuses all input.
    """

    limits: Limits = field(default_factory=Limits)
    _buffer: bytearray = field(default_factory=bytearray, init=False)
    _zlib: zlib._Decompress = field(
        default_factory=lambda: zlib.decompressobj(zdict=DICTIONARY), init=False
    )
    _broken: SessionError | None = field(default=None, init=False)

    def feed(self, data: bytes) -> None:
        if self._broken is not None:
            raise self._broken
        self._buffer += data

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as frames (at most one frame's worth)."""
        return len(self._buffer)

    def frames(self) -> Iterator[Frame]:
        while (frame := self.next_frame()) is not None:
            yield frame

    def next_frame(self) -> Frame | None:
        if self._broken is not None:
            raise self._broken
        try:
            return self._next()
        except SessionError as err:
            self._broken = err
            self._buffer.clear()
            raise

    def _next(self) -> Frame | None:
        buf = self._buffer
        if len(buf) < HEADER_SIZE:
            return None
        first, flags_length = struct.unpack_from(">II", buf, 0)
        flags, length = flags_length >> 24, flags_length & MAX_LENGTH
        control = bool(first & 0x80000000)
        # Refuse a hostile length from the header alone, before buffering its payload.
        limit = self.limits.max_control_payload if control else self.limits.max_data_payload
        if length > limit:
            kind = "control" if control else "data"
            raise SessionError(f"{kind} frame of {length} bytes exceeds the limit of {limit}")
        if len(buf) < HEADER_SIZE + length:
            return None
        payload = bytes(buf[HEADER_SIZE : HEADER_SIZE + length])
        del buf[: HEADER_SIZE + length]
        if not control:
            stream_id = first & MAX_STREAM_ID
            if stream_id == 0:
                raise SessionError("data frame on stream 0")
            return DataFrame(stream_id, payload, flags)
        version, frame_type = (first >> 16) & 0x7FFF, first & 0xFFFF
        if version != VERSION:
            raise SessionError(f"SPDY version {version} is not 3")
        return self._control(frame_type, flags, payload)

    def _control(self, frame_type: int, flags: int, payload: bytes) -> Frame:
        try:
            kind = FrameType(frame_type)
        except ValueError:
            return UnknownControlFrame(frame_type, flags, payload)
        length = len(payload)
        if kind in _FIXED_LENGTH and length != _FIXED_LENGTH[kind]:
            raise SessionError(f"{kind.name} frame of {length} bytes")
        if length < _MIN_LENGTH.get(kind, 0):
            raise SessionError(f"{kind.name} frame of {length} bytes")
        match kind:
            case FrameType.SYN_STREAM:
                stream_id, associated, prio_byte, slot = struct.unpack_from(">IIBB", payload)
                stream_id &= MAX_STREAM_ID
                if stream_id == 0:
                    raise SessionError("SYN_STREAM for stream 0")
                headers = self._headers(payload[10:], stream_id)
                return SynStream(
                    stream_id, headers, associated & MAX_STREAM_ID, prio_byte >> 5, slot, flags
                )
            case FrameType.SYN_REPLY | FrameType.HEADERS:
                stream_id = struct.unpack_from(">I", payload)[0] & MAX_STREAM_ID
                if stream_id == 0:
                    raise SessionError(f"{kind.name} for stream 0")
                headers = self._headers(payload[4:], stream_id)
                if kind is FrameType.SYN_REPLY:
                    return SynReply(stream_id, headers, flags)
                return HeadersFrame(stream_id, headers, flags)
            case FrameType.RST_STREAM:
                stream_id, status = struct.unpack(">II", payload)
                return RstStream(stream_id & MAX_STREAM_ID, status)
            case FrameType.SETTINGS:
                (count,) = struct.unpack_from(">I", payload)
                if length != 4 + 8 * count:
                    raise SessionError(f"SETTINGS of {length} bytes for {count} entries")
                entries = []
                for offset in range(4, length, 8):
                    flags_id, value = struct.unpack_from(">II", payload, offset)
                    entries.append(SettingsEntry(flags_id & 0xFFFFFF, value, flags_id >> 24))
                return Settings(tuple(entries), flags)
            case FrameType.PING:
                return Ping(struct.unpack(">I", payload)[0])
            case FrameType.GOAWAY:
                last_good, status = struct.unpack(">II", payload)
                return GoAway(last_good & MAX_STREAM_ID, status)
            case FrameType.WINDOW_UPDATE:
                stream_id, delta = struct.unpack(">II", payload)
                return WindowUpdate(stream_id & MAX_STREAM_ID, delta & MAX_STREAM_ID)
        raise AssertionError(kind)  # pragma: no cover (every FrameType is matched)

    def _headers(self, compressed: bytes, stream_id: int) -> Headers:
        if not compressed:
            return ()
        limit = self.limits.max_header_block
        try:
            # Inflate at most one byte past the limit: a bomb is detected, never allocated.
            block = self._zlib.decompress(compressed, limit + 1)
        except zlib.error as err:
            raise SessionError(f"header block does not inflate: {err}") from None
        if len(block) > limit or self._zlib.unconsumed_tail:
            raise SessionError(f"header block inflates past {limit} bytes")
        if self._zlib.eof:
            raise SessionError("header block ended the connection's zlib stream")
        # The shared zlib state is intact here, so what follows is only a stream error.
        return _parse_block(block, stream_id, self.limits.max_headers)
