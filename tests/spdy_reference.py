"""A second, test-only reading of the SPDY/3.1 frame layouts (draft 3.1, section 2).

Written apart from linerd.cri.streaming.spdy and on purpose in another style: every layout
is the list of bit fields the spec's diagrams draw, packed and unpacked as one big integer.
Frames are plain dicts; header blocks are lists of raw (name, value) byte pairs, no merging,
no checks beyond the layout. A misreading of the spec has to be made twice, differently, to
pass the tests that compare the two and the hand-written bytes.
"""

from __future__ import annotations

import zlib
from typing import Any

# Field lists, most significant bit first, as drawn in the spec. "X" bits are reserved.
CONTROL_HEADER = [("control", 1), ("version", 15), ("type", 16), ("flags", 8), ("length", 24)]
DATA_HEADER = [("control", 1), ("stream_id", 31), ("flags", 8), ("length", 24)]
BODIES: dict[int, list[tuple[str, int]]] = {
    1: [  # SYN_STREAM, then a header block
        ("X", 1),
        ("stream_id", 31),
        ("X", 1),
        ("associated_to", 31),
        ("priority", 3),
        ("unused", 5),
        ("slot", 8),
    ],
    2: [("X", 1), ("stream_id", 31)],  # SYN_REPLY, then a header block
    3: [("X", 1), ("stream_id", 31), ("status", 32)],  # RST_STREAM
    4: [("count", 32)],  # SETTINGS, then count entries
    6: [("ping_id", 32)],  # PING
    7: [("X", 1), ("last_good_stream_id", 31), ("status", 32)],  # GOAWAY
    8: [("X", 1), ("stream_id", 31)],  # HEADERS, then a header block
    9: [("X", 1), ("stream_id", 31), ("X", 1), ("delta", 31)],  # WINDOW_UPDATE
}
SETTINGS_ENTRY = [("flags", 8), ("id", 24), ("value", 32)]
WITH_HEADER_BLOCK = {1, 2, 8}


def pack(layout: list[tuple[str, int]], values: dict[str, int]) -> bytes:
    number = 0
    total = 0
    for name, bits in layout:
        value = 0 if name in ("X", "unused") else values[name]
        assert 0 <= value < 1 << bits, (name, value)
        number = number << bits | value
        total += bits
    assert total % 8 == 0
    return number.to_bytes(total // 8, "big")


def unpack(layout: list[tuple[str, int]], data: bytes) -> dict[str, int]:
    total = sum(bits for _, bits in layout)
    number = int.from_bytes(data[: total // 8], "big")
    values: dict[str, int] = {}
    shift = total
    for name, bits in layout:
        shift -= bits
        if name not in ("X", "unused"):
            values[name] = number >> shift & ((1 << bits) - 1)
    return values


def size(layout: list[tuple[str, int]]) -> int:
    return sum(bits for _, bits in layout) // 8


def header_block(pairs: list[tuple[bytes, bytes]]) -> bytes:
    """The uncompressed name/value block (section 2.6.10)."""
    out = len(pairs).to_bytes(4, "big")
    for name, value in pairs:
        out += len(name).to_bytes(4, "big") + name + len(value).to_bytes(4, "big") + value
    return out


def parse_header_block(block: bytes) -> list[tuple[bytes, bytes]]:
    count = int.from_bytes(block[:4], "big")
    pos = 4
    pairs = []
    for _ in range(count):
        parts = []
        for _ in range(2):
            length = int.from_bytes(block[pos : pos + 4], "big")
            parts.append(block[pos + 4 : pos + 4 + length])
            pos += 4 + length
        pairs.append((parts[0], parts[1]))
    assert pos == len(block)
    return pairs


class Reference:
    """One direction of a connection: frames (dicts) to bytes, or bytes to frames."""

    def __init__(self, dictionary: bytes) -> None:
        self.deflate = zlib.compressobj(zdict=dictionary)
        self.inflate = zlib.decompressobj(zdict=dictionary)

    def encode(self, frame: dict[str, Any]) -> bytes:
        if frame["type"] == "DATA":
            data = frame["data"]
            head = {"control": 0, "stream_id": frame["stream_id"], "flags": frame["flags"]}
            return pack(DATA_HEADER, {**head, "length": len(data)}) + data
        kind = frame["type"]
        body = pack(BODIES[kind], {**frame, "count": len(frame.get("entries", ()))})
        if kind == 4:
            for entry in frame["entries"]:
                body += pack(SETTINGS_ENTRY, entry)
        if kind in WITH_HEADER_BLOCK:
            raw = header_block(frame["headers"])
            body += self.deflate.compress(raw) + self.deflate.flush(zlib.Z_SYNC_FLUSH)
        head = {"control": 1, "version": 3, "type": kind, "flags": frame["flags"]}
        return pack(CONTROL_HEADER, {**head, "length": len(body)}) + body

    def decode(self, data: bytes) -> tuple[dict[str, Any], bytes]:
        """The first frame of `data`, and the bytes after it."""
        if data[0] & 0x80 == 0:
            head = unpack(DATA_HEADER, data)
            end = 8 + head["length"]
            frame = {"type": "DATA", "stream_id": head["stream_id"], "flags": head["flags"]}
            return {**frame, "data": data[8:end]}, data[end:]
        head = unpack(CONTROL_HEADER, data)
        assert head["version"] == 3
        kind = head["type"]
        end = 8 + head["length"]
        body = data[8:end]
        frame = {"type": kind, "flags": head["flags"], **unpack(BODIES[kind], body)}
        rest = body[size(BODIES[kind]) :]
        if kind == 4:
            frame["entries"] = [
                unpack(SETTINGS_ENTRY, rest[i : i + 8]) for i in range(0, len(rest), 8)
            ]
            assert len(frame["entries"]) == frame.pop("count")
        if kind in WITH_HEADER_BLOCK:
            frame["headers"] = parse_header_block(self.inflate.decompress(rest)) if rest else []
        return frame, data[end:]

    def decode_all(self, data: bytes) -> list[dict[str, Any]]:
        frames = []
        while data:
            frame, data = self.decode(data)
            frames.append(frame)
        return frames
