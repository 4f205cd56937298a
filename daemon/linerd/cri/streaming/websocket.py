"""WebSocket framing (RFC 6455, section 5) for the server side, sans-IO.

The streaming server's WebSocket endpoints carry Kubernetes' channel protocol
(`channels.py`) in WebSocket messages. This module turns bytes into messages and back and
owns no socket. Server frames go out unmasked; client frames must arrive masked (5.1).
Fragmented messages are reassembled; control frames may arrive between fragments (5.4).

What a peer controls is bounded (`Limits`): a frame or message longer than its limit is
refused from the frame header alone, before its payload is buffered.
"""

from __future__ import annotations

import base64
import codecs
import enum
import hashlib
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

from linerd import errdefs

# Appended to the client's Sec-WebSocket-Key before hashing (RFC 6455, 1.3).
HANDSHAKE_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_CONTROL_PAYLOAD = 125


class Opcode(enum.IntEnum):
    CONTINUATION = 0x0
    TEXT = 0x1
    BINARY = 0x2
    CLOSE = 0x8
    PING = 0x9
    PONG = 0xA


class CloseCode(enum.IntEnum):
    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    INVALID_DATA = 1007  # e.g. a text message that is not UTF-8
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011


def accept_key(client_key: str) -> str:
    """The Sec-WebSocket-Accept value answering a Sec-WebSocket-Key."""
    digest = hashlib.sha1((client_key.strip() + HANDSHAKE_GUID).encode("ascii")).digest()
    return base64.b64encode(digest).decode("ascii")


def valid_client_key(client_key: str) -> bool:
    """A Sec-WebSocket-Key must be 16 bytes in base64 (RFC 6455, 4.1)."""
    try:
        return len(base64.b64decode(client_key.strip(), validate=True)) == 16
    except ValueError:
        return False


class WebSocketError(errdefs.InvalidArgument):
    """The peer broke RFC 6455: close the connection with `code`."""

    def __init__(self, message: str, code: CloseCode = CloseCode.PROTOCOL_ERROR):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class Message:
    """A whole data message; `text` for TEXT messages (already checked to be UTF-8)."""

    data: bytes
    text: bool = False


@dataclass(frozen=True, slots=True)
class Ping:
    payload: bytes


@dataclass(frozen=True, slots=True)
class Pong:
    payload: bytes


@dataclass(frozen=True, slots=True)
class Close:
    code: int | None = None  # None: the peer sent no status code
    reason: str = ""


Event = Message | Ping | Pong | Close


@dataclass(frozen=True, slots=True)
class Limits:
    max_frame_payload: int = 1 << 20
    max_message: int = 4 << 20  # a reassembled fragmented message


def _mask(payload: bytes, key: bytes) -> bytes:
    """XOR with the 4-byte key repeated (5.3); the same operation unmasks."""
    if not payload:
        return payload
    repeated = (key * (len(payload) // 4 + 1))[: len(payload)]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(
        len(payload), "big"
    )


def encode_frame(
    opcode: int, payload: bytes = b"", *, fin: bool = True, mask_key: bytes | None = None
) -> bytes:
    """One frame. Servers send unmasked frames; `mask_key` is for a client's (tests)."""
    if opcode >= Opcode.CLOSE and (len(payload) > MAX_CONTROL_PAYLOAD or not fin):
        raise ValueError("control frames carry at most 125 bytes and are never fragmented")
    first = (0x80 if fin else 0) | opcode
    mask_bit = 0x80 if mask_key is not None else 0
    length = len(payload)
    if length < 126:
        head = struct.pack(">BB", first, mask_bit | length)
    elif length <= 0xFFFF:
        head = struct.pack(">BBH", first, mask_bit | 126, length)
    else:
        head = struct.pack(">BBQ", first, mask_bit | 127, length)
    if mask_key is None:
        return head + payload
    if len(mask_key) != 4:
        raise ValueError("a masking key is 4 bytes")
    return head + mask_key + _mask(payload, mask_key)


def encode_message(data: bytes | str) -> bytes:
    """A whole message in one unmasked frame: TEXT for str, BINARY for bytes."""
    if isinstance(data, str):
        return encode_frame(Opcode.TEXT, data.encode("utf-8"))
    return encode_frame(Opcode.BINARY, data)


def encode_close(code: int | None = CloseCode.NORMAL, reason: str = "") -> bytes:
    """A close frame; its reason is cut to fit the 125-byte control payload."""
    if code is None:
        return encode_frame(Opcode.CLOSE)
    raw = reason.encode("utf-8")[: MAX_CONTROL_PAYLOAD - 2]
    raw = raw.decode("utf-8", "ignore").encode("utf-8")  # never cut a character in half
    return encode_frame(Opcode.CLOSE, struct.pack(">H", code) + raw)


def _valid_close_code(code: int) -> bool:
    # 1004-1006 and 1015 are never sent on the wire; 1000-2999 belong to the RFC and its
    # registry, 3000-4999 to applications and libraries (7.4).
    if 1000 <= code <= 1014:
        return code not in (1004, 1005, 1006)
    return 3000 <= code <= 4999


@dataclass
class FrameDecoder:
    """Bytes from one client in, events out, incrementally: `feed`, then `next_event`
    until None (or iterate `events()`). After a `WebSocketError` the decoder refuses all
    input; the caller sends a close frame with the error's code and ends the connection."""

    limits: Limits = field(default_factory=Limits)
    require_mask: bool = True  # a server requires it (5.1); False decodes a server's frames
    _buffer: bytearray = field(default_factory=bytearray, init=False)
    _fragments: list[bytes] = field(default_factory=list, init=False)
    _fragment_size: int = field(default=0, init=False)
    _fragment_text: bool | None = field(default=None, init=False)  # None: no message open
    _utf8: codecs.IncrementalDecoder | None = field(default=None, init=False)
    _broken: WebSocketError | None = field(default=None, init=False)

    def feed(self, data: bytes) -> None:
        if self._broken is not None:
            raise self._broken
        self._buffer += data

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def events(self) -> Iterator[Event]:
        while (event := self.next_event()) is not None:
            yield event

    def next_event(self) -> Event | None:
        if self._broken is not None:
            raise self._broken
        try:
            while True:
                frame = self._next_frame()
                if frame is None:
                    return None
                event = self._handle(*frame)
                if event is not None:
                    return event
        except WebSocketError as err:
            self._broken = err
            self._buffer.clear()
            self._fragments.clear()
            raise

    def _next_frame(self) -> tuple[bool, int, bytes] | None:
        buf = self._buffer
        if len(buf) < 2:
            return None
        first, second = buf[0], buf[1]
        fin, rsv, opcode = bool(first & 0x80), first & 0x70, first & 0x0F
        masked, length = bool(second & 0x80), second & 0x7F
        if rsv:
            raise WebSocketError("reserved bits set without an extension")
        if masked != self.require_mask:
            want = "must be masked" if self.require_mask else "must not be masked"
            raise WebSocketError(f"frames from this peer {want}")
        pos = 2
        if length == 126:
            if len(buf) < 4:
                return None
            (length,) = struct.unpack_from(">H", buf, 2)
            pos = 4
            if length < 126:
                raise WebSocketError("length not in its shortest form")
        elif length == 127:
            if len(buf) < 10:
                return None
            (length,) = struct.unpack_from(">Q", buf, 2)
            pos = 10
            if length >> 63:
                raise WebSocketError("64-bit length with its top bit set")
            if length <= 0xFFFF:
                raise WebSocketError("length not in its shortest form")
        if opcode >= Opcode.CLOSE and (length > MAX_CONTROL_PAYLOAD or not fin):
            raise WebSocketError("control frame too long or fragmented")
        # Refuse a hostile length before its payload is buffered.
        if length > self.limits.max_frame_payload:
            raise WebSocketError(
                f"frame of {length} bytes exceeds {self.limits.max_frame_payload}",
                CloseCode.MESSAGE_TOO_BIG,
            )
        if opcode == Opcode.CONTINUATION and self._fragment_size + length > self.limits.max_message:
            raise WebSocketError("message exceeds the limit", CloseCode.MESSAGE_TOO_BIG)
        key_end = pos + (4 if masked else 0)
        if len(buf) < key_end + length:
            return None
        payload = bytes(buf[key_end : key_end + length])
        if masked:
            payload = _mask(payload, bytes(buf[pos:key_end]))
        del buf[: key_end + length]
        return fin, opcode, payload

    def _handle(self, fin: bool, opcode: int, payload: bytes) -> Event | None:
        match opcode:
            case Opcode.PING:
                return Ping(payload)
            case Opcode.PONG:
                return Pong(payload)
            case Opcode.CLOSE:
                return self._close(payload)
            case Opcode.TEXT | Opcode.BINARY:
                if self._fragment_text is not None:
                    raise WebSocketError("new message inside a fragmented one")
                text = opcode == Opcode.TEXT
                if fin:
                    if text:
                        self._check_text(payload, final=True, fresh=True)
                    return Message(payload, text)
                self._fragment_text = text
                self._utf8 = codecs.getincrementaldecoder("utf-8")() if text else None
                self._append(payload, fin=False)
                return None
            case Opcode.CONTINUATION:
                if self._fragment_text is None:
                    raise WebSocketError("continuation frame without a message")
                self._append(payload, fin=fin)
                if not fin:
                    return None
                message = Message(b"".join(self._fragments), self._fragment_text)
                self._fragments.clear()
                self._fragment_size = 0
                self._fragment_text = None
                self._utf8 = None
                return message
        raise WebSocketError(f"unknown opcode {opcode:#x}")

    def _append(self, payload: bytes, *, fin: bool) -> None:
        if self._utf8 is not None:
            self._check_text(payload, final=fin, fresh=False)
        self._fragments.append(payload)
        self._fragment_size += len(payload)

    def _check_text(self, payload: bytes, *, final: bool, fresh: bool) -> None:
        # Checked as fragments arrive, so a bad byte fails fast (8.1).
        decoder = codecs.getincrementaldecoder("utf-8")() if fresh else self._utf8
        assert decoder is not None
        try:
            decoder.decode(payload, final)
        except UnicodeDecodeError:
            raise WebSocketError("text message is not UTF-8", CloseCode.INVALID_DATA) from None

    def _close(self, payload: bytes) -> Close:
        if not payload:
            return Close()
        if len(payload) == 1:
            raise WebSocketError("close frame with a 1-byte body")
        (code,) = struct.unpack_from(">H", payload)
        if not _valid_close_code(code):
            raise WebSocketError(f"close code {code} is not allowed on the wire")
        try:
            reason = payload[2:].decode("utf-8")
        except UnicodeDecodeError:
            raise WebSocketError("close reason is not UTF-8", CloseCode.INVALID_DATA) from None
        return Close(code, reason)
