"""SPDY/3.1 framing (linerd.cri.streaming.spdy) against the spec, by three routes.

1. Byte strings written here by hand from the spec's frame diagrams (draft 3.1, 2.2 and 2.6).
2. A second implementation, tests/spdy_reference.py, written in another style: each module
   direction is checked against it, on the hand-written frames and on generated ones.
3. Header blocks: the module's compressed output inflated by a plain zlib decompressobj primed
   with the dictionary, and plain zlib output fed to the module.
Then the bounds: hostile lengths and decompression bombs are refused, not allocated.
"""

from __future__ import annotations

import tracemalloc
import zlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from spdy_reference import Reference, header_block

from linerd.cri.streaming import spdy

pytestmark = pytest.mark.unit


def h(text: str) -> bytes:
    """Hex with spaces and | field separators, as the vectors below are written."""
    return bytes.fromhex(text.replace("|", " "))


def plain_deflate() -> Any:
    return zlib.compressobj(zdict=spdy.DICTIONARY)


def plain_inflate() -> Any:
    return zlib.decompressobj(zdict=spdy.DICTIONARY)


# --- the dictionary ------------------------------------------------------------------------


def test_dictionary_is_the_spec_one() -> None:
    d = spdy.DICTIONARY
    assert len(d) == 1423
    assert zlib.adler32(d) == 0xE3C6A7C2
    assert d.startswith(h("00 00 00 07") + b"options" + h("00 00 00 04") + b"head")
    assert h("00 00 00 06") + b"origin100101201" in d
    assert b"503 Service UnavailableJan Feb" in d
    assert d.endswith(b"charset=iso-8859-1,utf-,*,enq=0.")


# --- fixed-layout frames, by hand ----------------------------------------------------------

# (hand-written bytes, the module's frame, the reference's dict)
FIXED_VECTORS: list[tuple[bytes, spdy.Frame, dict[str, Any]]] = [
    (
        # DATA: C=0 + stream id 3 | flags FIN | length 2 | "hi"
        h("00 00 00 03 | 01 | 00 00 02 | 68 69"),
        spdy.DataFrame(3, b"hi", spdy.FLAG_FIN),
        {"type": "DATA", "stream_id": 3, "flags": 1, "data": b"hi"},
    ),
    (
        # DATA, empty, FIN: the half-close Kubernetes peers send
        h("00 00 00 05 | 01 | 00 00 00"),
        spdy.DataFrame(5, b"", spdy.FLAG_FIN),
        {"type": "DATA", "stream_id": 5, "flags": 1, "data": b""},
    ),
    (
        # DATA on the highest stream id
        h("7f ff ff ff | 00 | 00 00 01 | 00"),
        spdy.DataFrame(0x7FFFFFFF, b"\0"),
        {"type": "DATA", "stream_id": 0x7FFFFFFF, "flags": 0, "data": b"\0"},
    ),
    (
        # RST_STREAM: C=1 version 3 | type 3 | flags 0 | length 8 | stream 5 | CANCEL (5)
        h("80 03 | 00 03 | 00 | 00 00 08 | 00 00 00 05 | 00 00 00 05"),
        spdy.RstStream(5, spdy.RstStatus.CANCEL),
        {"type": 3, "flags": 0, "stream_id": 5, "status": 5},
    ),
    (
        # RST_STREAM, PROTOCOL_ERROR (1) on stream 1
        h("80 03 | 00 03 | 00 | 00 00 08 | 00 00 00 01 | 00 00 00 01"),
        spdy.RstStream(1, spdy.RstStatus.PROTOCOL_ERROR),
        {"type": 3, "flags": 0, "stream_id": 1, "status": 1},
    ),
    (
        # SETTINGS: 2 entries; (flags 0, id 4 MAX_CONCURRENT_STREAMS, 100),
        # (flags PERSIST_VALUE, id 7 INITIAL_WINDOW_SIZE, 65536)
        h(
            "80 03 | 00 04 | 00 | 00 00 14 | 00 00 00 02"
            "| 00 | 00 00 04 | 00 00 00 64"
            "| 01 | 00 00 07 | 00 01 00 00"
        ),
        spdy.Settings(
            (
                spdy.SettingsEntry(spdy.SettingId.MAX_CONCURRENT_STREAMS, 100),
                spdy.SettingsEntry(
                    spdy.SettingId.INITIAL_WINDOW_SIZE, 65536, spdy.FLAG_SETTINGS_PERSIST_VALUE
                ),
            )
        ),
        {
            "type": 4,
            "flags": 0,
            "entries": [
                {"flags": 0, "id": 4, "value": 100},
                {"flags": 1, "id": 7, "value": 65536},
            ],
        },
    ),
    (
        # SETTINGS with CLEAR_SETTINGS and no entries
        h("80 03 | 00 04 | 01 | 00 00 04 | 00 00 00 00"),
        spdy.Settings((), spdy.FLAG_SETTINGS_CLEAR_SETTINGS),
        {"type": 4, "flags": 1, "entries": []},
    ),
    (
        # PING id 1 (a client's: odd)
        h("80 03 | 00 06 | 00 | 00 00 04 | 00 00 00 01"),
        spdy.Ping(1),
        {"type": 6, "flags": 0, "ping_id": 1},
    ),
    (
        # PING with all 32 bits of the id set
        h("80 03 | 00 06 | 00 | 00 00 04 | ff ff ff ff"),
        spdy.Ping(0xFFFFFFFF),
        {"type": 6, "flags": 0, "ping_id": 0xFFFFFFFF},
    ),
    (
        # GOAWAY: last good stream 7 | OK
        h("80 03 | 00 07 | 00 | 00 00 08 | 00 00 00 07 | 00 00 00 00"),
        spdy.GoAway(7),
        {"type": 7, "flags": 0, "last_good_stream_id": 7, "status": 0},
    ),
    (
        # GOAWAY: nothing accepted | PROTOCOL_ERROR
        h("80 03 | 00 07 | 00 | 00 00 08 | 00 00 00 00 | 00 00 00 01"),
        spdy.GoAway(0, spdy.GoAwayStatus.PROTOCOL_ERROR),
        {"type": 7, "flags": 0, "last_good_stream_id": 0, "status": 1},
    ),
    (
        # WINDOW_UPDATE: stream 1 | delta 65536
        h("80 03 | 00 09 | 00 | 00 00 08 | 00 00 00 01 | 00 01 00 00"),
        spdy.WindowUpdate(1, 65536),
        {"type": 9, "flags": 0, "stream_id": 1, "delta": 65536},
    ),
    (
        # WINDOW_UPDATE for the connection (stream 0), largest delta
        h("80 03 | 00 09 | 00 | 00 00 08 | 00 00 00 00 | 7f ff ff ff"),
        spdy.WindowUpdate(0, 0x7FFFFFFF),
        {"type": 9, "flags": 0, "stream_id": 0, "delta": 0x7FFFFFFF},
    ),
]


@pytest.mark.parametrize(("wire", "frame", "ref"), FIXED_VECTORS)
def test_fixed_frames_match_the_hand_written_bytes(
    wire: bytes, frame: spdy.Frame, ref: dict[str, Any]
) -> None:
    # The reference agrees with the hand-written bytes both ways ...
    reference = Reference(spdy.DICTIONARY)
    assert reference.encode(ref) == wire
    assert reference.decode(wire) == (ref, b"")
    # ... and so does the module.
    assert spdy.FrameEncoder().encode(frame) == wire
    decoder = spdy.FrameDecoder()
    decoder.feed(wire)
    assert list(decoder.frames()) == [frame]
    assert decoder.buffered == 0


def test_reserved_bits_are_ignored_on_input() -> None:
    # The X bit before each 31-bit id set (the spec says send 0; receivers must not care).
    wire = h("80 03 | 00 09 | 00 | 00 00 08 | 80 00 00 01 | 80 00 00 10")
    decoder = spdy.FrameDecoder()
    decoder.feed(wire)
    assert decoder.next_frame() == spdy.WindowUpdate(1, 16)
    wire = h("80 03 | 00 03 | 00 | 00 00 08 | 80 00 00 03 | 00 00 00 05")
    decoder.feed(wire)
    assert decoder.next_frame() == spdy.RstStream(3, 5)


# --- frames with a header block ------------------------------------------------------------

STREAM_HEADERS = (("streamtype", "error"),)
# count 1 | name length 10 | "streamtype" | value length 5 | "error"
STREAM_BLOCK = h("00 00 00 01 | 00 00 00 0a") + b"streamtype" + h("00 00 00 05") + b"error"
# Port-forward's data stream: three pairs, in order.
PORT_HEADERS = (("streamtype", "data"), ("port", "80"), ("requestid", "0"))
PORT_BLOCK = (
    h("00 00 00 03")
    + h("00 00 00 0a")
    + b"streamtype"
    + h("00 00 00 04")
    + b"data"
    + h("00 00 00 04")
    + b"port"
    + h("00 00 00 02")
    + b"80"
    + h("00 00 00 09")
    + b"requestid"
    + h("00 00 00 01")
    + b"0"
)
EMPTY_BLOCK = h("00 00 00 00")

# (fixed part after the 8-byte header, by hand; frame type; flags; frame; uncompressed block)
HEADER_VECTORS: list[tuple[bytes, int, int, spdy.Frame, bytes]] = [
    (
        # SYN_STREAM: stream 1 | associated 0 | priority 0 + unused | slot 0
        h("00 00 00 01 | 00 00 00 00 | 00 | 00"),
        1,
        0,
        spdy.SynStream(1, STREAM_HEADERS),
        STREAM_BLOCK,
    ),
    (
        # SYN_STREAM, FIN + UNIDIRECTIONAL: stream 7 | associated 2 | priority 3 (011 00000) | 0
        h("00 00 00 07 | 00 00 00 02 | 60 | 00"),
        1,
        3,
        spdy.SynStream(7, PORT_HEADERS, 2, 3, 0, spdy.FLAG_FIN | spdy.FLAG_UNIDIRECTIONAL),
        PORT_BLOCK,
    ),
    (
        # SYN_STREAM, lowest priority 7 (111 00000), slot 9
        h("00 00 00 03 | 00 00 00 00 | e0 | 09"),
        1,
        0,
        spdy.SynStream(3, STREAM_HEADERS, 0, 7, 9),
        STREAM_BLOCK,
    ),
    (
        # SYN_REPLY accepting stream 1 with no headers (the block still says "0 pairs")
        h("00 00 00 01"),
        2,
        0,
        spdy.SynReply(1),
        EMPTY_BLOCK,
    ),
    (
        # SYN_REPLY with FIN
        h("00 00 00 05"),
        2,
        1,
        spdy.SynReply(5, PORT_HEADERS, spdy.FLAG_FIN),
        PORT_BLOCK,
    ),
    (
        # HEADERS on stream 9
        h("00 00 00 09"),
        8,
        0,
        spdy.HeadersFrame(9, STREAM_HEADERS),
        STREAM_BLOCK,
    ),
]


def test_header_frames_match_the_hand_written_layout() -> None:
    encoder = spdy.FrameEncoder()
    inflate = plain_inflate()  # one stream for the whole direction, as the peer has
    for fixed, frame_type, flags, frame, block in HEADER_VECTORS:
        wire = encoder.encode(frame)
        head = h("80 03") + frame_type.to_bytes(2, "big") + bytes([flags])
        assert wire[:5] == head
        assert int.from_bytes(wire[5:8], "big") == len(wire) - 8
        assert wire[8 : 8 + len(fixed)] == fixed
        compressed = wire[8 + len(fixed) :]
        assert inflate.decompress(compressed) == block
        assert not inflate.unconsumed_tail


def test_header_frames_decode_from_plain_zlib() -> None:
    deflate = plain_deflate()
    decoder = spdy.FrameDecoder()
    for fixed, frame_type, flags, frame, block in HEADER_VECTORS:
        body = fixed + deflate.compress(block) + deflate.flush(zlib.Z_SYNC_FLUSH)
        head = h("80 03") + frame_type.to_bytes(2, "big") + bytes([flags])
        decoder.feed(head + len(body).to_bytes(3, "big") + body)
        assert decoder.next_frame() == frame
    assert decoder.next_frame() is None


def test_header_frames_against_the_reference() -> None:
    # Module out, reference in; reference out, module in: each direction its own zlib stream.
    encoder, ref_in = spdy.FrameEncoder(), Reference(spdy.DICTIONARY)
    ref_out, decoder = Reference(spdy.DICTIONARY), spdy.FrameDecoder()
    for fixed, frame_type, flags, frame, block in HEADER_VECTORS:
        got, rest = ref_in.decode(encoder.encode(frame))
        assert rest == b""
        assert got["type"] == frame_type
        assert got["flags"] == flags
        assert header_block(got["headers"]) == block
        wire = ref_out.encode({**got, "headers": got["headers"]})
        assert wire[8 : 8 + len(fixed)] == fixed
        decoder.feed(wire)
        assert decoder.next_frame() == frame


def test_repeated_names_travel_nul_joined() -> None:
    encoder = spdy.FrameEncoder()
    wire = encoder.encode(spdy.SynReply(1, (("a", "x"), ("b", "y"), ("a", "z"))))
    block = plain_inflate().decompress(wire[12:])
    assert block == (
        h("00 00 00 02 | 00 00 00 01")
        + b"a"
        + h("00 00 00 03")
        + b"x\0z"
        + h("00 00 00 01")
        + b"b"
        + h("00 00 00 01")
        + b"y"
    )
    decoder = spdy.FrameDecoder()
    decoder.feed(wire)
    assert decoder.next_frame() == spdy.SynReply(1, (("a", "x"), ("a", "z"), ("b", "y")))


def test_unknown_control_frames_are_handed_up() -> None:
    # Type 10 (CREDENTIAL, deprecated in 3.1) and anything new: the caller ignores them.
    decoder = spdy.FrameDecoder()
    decoder.feed(
        h("80 03 | 00 0a | 00 | 00 00 02 | ab cd") + h("80 03 00 06 00 00 00 04 00 00 00 02")
    )
    assert list(decoder.frames()) == [spdy.UnknownControlFrame(10, 0, h("ab cd")), spdy.Ping(2)]


# --- generated frames, both directions, any chunking ---------------------------------------

_ids = st.integers(1, spdy.MAX_STREAM_ID)
_names = st.text("abcdefghijklmnopqrstuvwxyz-0123456789", min_size=1, max_size=12)
_values = st.text(
    st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), min_size=1, max_size=20
)
_headers = st.dictionaries(_names, _values, max_size=5).map(lambda d: tuple(d.items()))
_u32 = st.integers(0, 0xFFFFFFFF)
_frames = st.one_of(
    st.builds(spdy.DataFrame, _ids, st.binary(max_size=64), st.sampled_from([0, 1])),
    st.builds(
        spdy.SynStream,
        _ids,
        _headers,
        st.integers(0, spdy.MAX_STREAM_ID),
        st.integers(0, 7),
        st.integers(0, 255),
        st.sampled_from([0, 1, 2, 3]),
    ),
    st.builds(spdy.SynReply, _ids, _headers, st.sampled_from([0, 1])),
    st.builds(spdy.RstStream, _ids, st.integers(1, 11)),
    st.builds(
        spdy.Settings,
        st.lists(
            st.builds(spdy.SettingsEntry, st.integers(0, 0xFFFFFF), _u32, st.integers(0, 3)),
            max_size=4,
        ).map(tuple),
        st.sampled_from([0, 1]),
    ),
    st.builds(spdy.Ping, _u32),
    st.builds(spdy.GoAway, st.integers(0, spdy.MAX_STREAM_ID), st.integers(0, 2)),
    st.builds(spdy.HeadersFrame, _ids, _headers, st.sampled_from([0, 1])),
    st.builds(spdy.WindowUpdate, st.integers(0, spdy.MAX_STREAM_ID), _ids),
)


def _to_ref(frame: spdy.Frame) -> dict[str, Any]:
    """The reference's dict for a module frame (header values never repeat here)."""

    def pairs(headers: spdy.Headers) -> list[tuple[bytes, bytes]]:
        return [(n.encode(), v.encode()) for n, v in headers]

    match frame:
        case spdy.DataFrame():
            return {"type": "DATA", "stream_id": frame.stream_id, "flags": frame.flags,
                    "data": frame.data}  # fmt: skip
        case spdy.SynStream():
            return {"type": 1, "flags": frame.flags, "stream_id": frame.stream_id,
                    "associated_to": frame.associated_to, "priority": frame.priority,
                    "slot": frame.slot, "headers": pairs(frame.headers)}  # fmt: skip
        case spdy.SynReply():
            return {"type": 2, "flags": frame.flags, "stream_id": frame.stream_id,
                    "headers": pairs(frame.headers)}  # fmt: skip
        case spdy.HeadersFrame():
            return {"type": 8, "flags": frame.flags, "stream_id": frame.stream_id,
                    "headers": pairs(frame.headers)}  # fmt: skip
        case spdy.RstStream():
            return {"type": 3, "flags": 0, "stream_id": frame.stream_id, "status": frame.status}
        case spdy.Settings():
            entries = [{"flags": e.flags, "id": e.id, "value": e.value} for e in frame.entries]
            return {"type": 4, "flags": frame.flags, "entries": entries}
        case spdy.Ping():
            return {"type": 6, "flags": 0, "ping_id": frame.ping_id}
        case spdy.GoAway():
            return {"type": 7, "flags": 0, "last_good_stream_id": frame.last_good_stream_id,
                    "status": frame.status}  # fmt: skip
        case spdy.WindowUpdate():
            return {"type": 9, "flags": 0, "stream_id": frame.stream_id, "delta": frame.delta}
    raise AssertionError(frame)


@settings(max_examples=150, deadline=None)
@given(st.lists(_frames, max_size=8), st.lists(st.integers(1, 40), min_size=1, max_size=20))
def test_generated_frames_both_ways(frames: list[spdy.Frame], cuts: list[int]) -> None:
    # Module encoder -> reference decoder.
    encoder = spdy.FrameEncoder()
    wire = b"".join(encoder.encode(f) for f in frames)
    assert Reference(spdy.DICTIONARY).decode_all(wire) == [_to_ref(f) for f in frames]
    # Reference encoder -> module decoder, fed in arbitrary pieces.
    ref = Reference(spdy.DICTIONARY)
    wire = b"".join(ref.encode(_to_ref(f)) for f in frames)
    decoder = spdy.FrameDecoder()
    got: list[spdy.Frame] = []
    pos, i = 0, 0
    while pos < len(wire):
        step = cuts[i % len(cuts)]
        decoder.feed(wire[pos : pos + step])
        got += decoder.frames()
        pos, i = pos + step, i + 1
    assert got == frames
    assert decoder.buffered == 0


# --- bounds and protocol errors ------------------------------------------------------------


def test_hostile_lengths_are_refused_from_the_header_alone() -> None:
    limits = spdy.Limits(max_data_payload=1024, max_control_payload=512)
    decoder = spdy.FrameDecoder(limits)
    decoder.feed(h("00 00 00 01 | 00 | ff ff ff"))  # a data frame claiming 16 MiB
    with pytest.raises(spdy.SessionError, match="exceeds"):
        decoder.next_frame()
    assert decoder.buffered == 0
    with pytest.raises(spdy.SessionError):  # the connection is over
        decoder.feed(b"more")
    decoder = spdy.FrameDecoder(limits)
    decoder.feed(h("80 03 | 00 01 | 00 | 00 02 01"))  # SYN_STREAM of 513 bytes
    with pytest.raises(spdy.SessionError):
        decoder.next_frame()
    # At the limit is fine.
    decoder = spdy.FrameDecoder(limits)
    decoder.feed(h("00 00 00 01 | 00 | 00 04 00") + bytes(1024))
    assert decoder.next_frame() == spdy.DataFrame(1, bytes(1024))


def _headers_frame(raw_block: bytes, deflate: Any | None = None) -> bytes:
    deflate = deflate or plain_deflate()
    body = h("00 00 00 01") + deflate.compress(raw_block) + deflate.flush(zlib.Z_SYNC_FLUSH)
    return h("80 03 00 08 00") + len(body).to_bytes(3, "big") + body


def test_a_decompression_bomb_is_refused_not_inflated() -> None:
    value = b"a" * (16 << 20)  # 16 MiB of header value, about 16 KiB compressed
    frame = _headers_frame(header_block([(b"x", value)]))
    del value
    assert len(frame) < 200 << 10
    decoder = spdy.FrameDecoder(spdy.Limits(max_control_payload=256 << 10))
    decoder.feed(frame)
    tracemalloc.start()
    try:
        with pytest.raises(spdy.SessionError, match="inflates past"):
            decoder.next_frame()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20  # the limit (64 KiB) and the frame, not 16 MiB


def test_a_lying_pair_count_is_a_stream_error_and_the_session_goes_on() -> None:
    deflate = plain_deflate()
    decoder = spdy.FrameDecoder()
    decoder.feed(_headers_frame(h("ff ff ff ff"), deflate))
    decoder.feed(_headers_frame(STREAM_BLOCK, deflate))
    with pytest.raises(spdy.StreamError) as err:
        decoder.next_frame()
    assert (err.value.stream_id, err.value.status) == (1, spdy.RstStatus.PROTOCOL_ERROR)
    # The shared zlib stream stayed in step: the next block decodes.
    assert decoder.next_frame() == spdy.HeadersFrame(1, STREAM_HEADERS)


@pytest.mark.parametrize(
    "block",
    [
        header_block([(b"a", b"1"), (b"a", b"2")]),  # duplicate name
        header_block([(b"", b"1")]),  # empty name
        header_block([(b"Upper", b"1")]),  # names are lower case
        header_block([(b"a", b"1\0")]),  # a value never ends with NUL
        header_block([(b"a", b"\x001")]),  # nor starts with one
        header_block([(b"a", b"1")]) + b"junk",  # bytes after the last pair
        header_block([(b"a", b"1")])[:-1],  # truncated
    ],
)
def test_bad_header_blocks_are_stream_errors(block: bytes) -> None:
    decoder = spdy.FrameDecoder()
    decoder.feed(_headers_frame(block))
    with pytest.raises(spdy.StreamError):
        decoder.next_frame()


@pytest.mark.parametrize(
    "wire",
    [
        h("80 02 | 00 06 | 00 | 00 00 04 | 00 00 00 01"),  # SPDY/2
        h("80 03 | 00 06 | 00 | 00 00 05 | 00 00 00 01 00"),  # PING of 5 bytes
        h("80 03 | 00 03 | 00 | 00 00 04 | 00 00 00 01"),  # RST_STREAM of 4
        h("80 03 | 00 07 | 00 | 00 00 04 | 00 00 00 01"),  # GOAWAY without status (SPDY/2)
        h("80 03 | 00 04 | 00 | 00 00 08 | 00 00 00 02 | 00 00 00 01"),  # 2 entries, 1 sent
        h("80 03 | 00 01 | 00 | 00 00 06 | 00 00 00 01 | 00 00"),  # SYN_STREAM too short
        h("00 00 00 00 | 00 | 00 00 00"),  # DATA on stream 0
        h("80 03 | 00 02 | 00 | 00 00 06 | 00 00 00 01 | ff ff"),  # block is not zlib
    ],
)
def test_malformed_frames_end_the_session(wire: bytes) -> None:
    decoder = spdy.FrameDecoder()
    decoder.feed(wire)
    with pytest.raises(spdy.SessionError):
        decoder.next_frame()
    with pytest.raises(spdy.SessionError):
        decoder.next_frame()


def test_byte_by_byte_input_gives_the_same_frames() -> None:
    encoder = spdy.FrameEncoder()
    frames = [f for _, _, _, f, _ in HEADER_VECTORS] + [f for _, f, _ in FIXED_VECTORS]
    encoded = [encoder.encode(f) for f in frames]
    wire = b"".join(encoded)
    decoder = spdy.FrameDecoder()
    got = []
    for i in range(len(wire)):
        decoder.feed(wire[i : i + 1])
        got += decoder.frames()
        # Never more than the frame in progress stays buffered.
        assert decoder.buffered < max(len(e) for e in encoded)
    assert got == frames


def test_encoder_refuses_what_cannot_be_framed() -> None:
    encoder = spdy.FrameEncoder()
    for frame in (
        spdy.DataFrame(0, b""),
        spdy.DataFrame(1 << 31, b""),
        spdy.DataFrame(1, bytes(spdy.MAX_LENGTH + 1)),
        spdy.SynStream(1, priority=8),
        spdy.WindowUpdate(1, 0),
        spdy.SynReply(1, (("", "x"),)),
        spdy.SynReply(1, (("a", "x\0y"),)),
    ):
        with pytest.raises(ValueError):
            encoder.encode(frame)
