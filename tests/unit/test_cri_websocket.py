"""WebSocket framing (RFC 6455) and Kubernetes' channel protocol for the CRI streaming server.

The frames are checked against byte strings from the RFC's own examples (section 5.7, the
handshake of 1.3) and written by hand from its frame diagram (5.2), and against a second
implementation below (`ref_encode`, `ref_decode`), written apart in another style: a bit
reader over the diagram's fields. The channel protocol is checked against hand-written
messages of the wsstream formats.
"""

from __future__ import annotations

import base64
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from linerd.cri.streaming import channels, websocket
from linerd.cri.streaming.websocket import Close, Message, Opcode, Ping, Pong

pytestmark = pytest.mark.unit


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace("|", " "))


# --- the test-side reading of RFC 6455, 5.2 ------------------------------------------------


def ref_encode(fin: int, opcode: int, payload: bytes, key: bytes | None) -> bytes:
    """Bits as the diagram draws them: FIN, RSV1-3, opcode, MASK, 7-bit length (+16/+64)."""
    bits = f"{fin:01b}000{opcode:04b}{int(key is not None):01b}"
    n = len(payload)
    if n <= 125:
        bits += f"{n:07b}"
    elif n < 1 << 16:
        bits += f"{126:07b}{n:016b}"
    else:
        bits += f"{127:07b}{n:064b}"
    out = int(bits, 2).to_bytes(len(bits) // 8, "big")
    if key is None:
        return out + payload
    return out + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def ref_decode(data: bytes) -> list[tuple[int, int, bytes]]:
    """(fin, opcode, unmasked payload) of each frame in `data`."""
    frames = []
    while data:
        bits = "".join(f"{b:08b}" for b in data[:2])
        fin, opcode, masked, n = int(bits[0]), int(bits[4:8], 2), bits[8] == "1", int(bits[9:], 2)
        pos = 2
        if n == 126:
            n, pos = int.from_bytes(data[2:4], "big"), 4
        elif n == 127:
            n, pos = int.from_bytes(data[2:10], "big"), 10
        key = data[pos : pos + 4] if masked else b"\0\0\0\0"
        pos += 4 if masked else 0
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(data[pos : pos + n]))
        frames.append((fin, opcode, payload))
        data = data[pos + n :]
    return frames


KEY = h("37 fa 21 3d")  # the RFC's example masking key

# (bytes from RFC 6455 5.7 or by hand, fin, opcode, payload, masking key)
VECTORS = [
    # 5.7: a single-frame unmasked text message "Hello"
    (h("81 05 48 65 6c 6c 6f"), 1, Opcode.TEXT, b"Hello", None),
    # 5.7: a single-frame masked text message "Hello"
    (h("81 85 | 37 fa 21 3d | 7f 9f 4d 51 58"), 1, Opcode.TEXT, b"Hello", KEY),
    # 5.7: a fragmented unmasked text message, first and last fragment
    (h("01 03 48 65 6c"), 0, Opcode.TEXT, b"Hel", None),
    (h("80 02 6c 6f"), 1, Opcode.CONTINUATION, b"lo", None),
    # 5.7: unmasked ping "Hello", masked pong "Hello"
    (h("89 05 48 65 6c 6c 6f"), 1, Opcode.PING, b"Hello", None),
    (h("8a 85 | 37 fa 21 3d | 7f 9f 4d 51 58"), 1, Opcode.PONG, b"Hello", KEY),
    # 5.7: 256 bytes of binary in one unmasked frame: 16-bit length
    (h("82 7e 01 00") + bytes(256), 1, Opcode.BINARY, bytes(256), None),
    # 5.7: 64 KiB of binary in one unmasked frame: 64-bit length
    (h("82 7f 00 00 00 00 00 01 00 00") + bytes(65536), 1, Opcode.BINARY, bytes(65536), None),
    # by hand: 125 bytes still fit the 7-bit length; 126 need the 16-bit form
    (h("82 7d") + bytes(125), 1, Opcode.BINARY, bytes(125), None),
    (h("82 7e 00 7e") + bytes(126), 1, Opcode.BINARY, bytes(126), None),
    # by hand: 65535 is the last 16-bit length
    (h("82 7e ff ff") + bytes(65535), 1, Opcode.BINARY, bytes(65535), None),
    # by hand: close 1000 "bye", masked by the client with key 01 02 03 04
    (
        h("88 85 | 01 02 03 04 | 02 ea 61 7d 64"),
        1,
        Opcode.CLOSE,
        h("03 e8") + b"bye",
        h("01 02 03 04"),
    ),
    # by hand: an empty binary message
    (h("82 00"), 1, Opcode.BINARY, b"", None),
]


@pytest.mark.parametrize(("wire", "fin", "opcode", "payload", "key"), VECTORS)
def test_frames_match_the_rfc_bytes(
    wire: bytes, fin: int, opcode: int, payload: bytes, key: bytes | None
) -> None:
    assert ref_encode(fin, opcode, payload, key) == wire
    assert ref_decode(wire) == [(fin, opcode, payload)]
    assert websocket.encode_frame(opcode, payload, fin=bool(fin), mask_key=key) == wire


def test_handshake_accept_key_from_the_rfc() -> None:
    assert websocket.accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    assert websocket.valid_client_key("dGhlIHNhbXBsZSBub25jZQ==")
    assert not websocket.valid_client_key("c2hvcnQ=")
    assert not websocket.valid_client_key("not base64!")


def _decode_client(wire: bytes, limits: websocket.Limits | None = None) -> list[object]:
    decoder = websocket.FrameDecoder(limits or websocket.Limits())
    decoder.feed(wire)
    return list(decoder.events())


def test_decoder_on_the_rfc_examples() -> None:
    # A client's frames are masked: the RFC's masked "Hello", then a fragmented masked
    # message with a ping between its fragments (5.4 allows control frames there).
    wire = (
        h("81 85 37 fa 21 3d 7f 9f 4d 51 58")
        + ref_encode(0, Opcode.TEXT, b"Hel", KEY)
        + ref_encode(1, Opcode.PING, b"p", KEY)
        + ref_encode(1, Opcode.CONTINUATION, b"lo", KEY)
        + ref_encode(1, Opcode.BINARY, b"\x00\xff", KEY)
        + h("88 85 | 01 02 03 04 | 02 ea 61 7d 64")
    )
    assert _decode_client(wire) == [
        Message(b"Hello", text=True),
        Ping(b"p"),
        Message(b"Hello", text=True),
        Message(b"\x00\xff"),
        Close(1000, "bye"),
    ]
    # A server's frames (RFC 5.7, unmasked) decode with require_mask off.
    decoder = websocket.FrameDecoder(require_mask=False)
    decoder.feed(h("01 03 48 65 6c 80 02 6c 6f 89 05 48 65 6c 6c 6f 88 00"))
    assert list(decoder.events()) == [Message(b"Hello", text=True), Ping(b"Hello"), Close()]


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from([Opcode.TEXT, Opcode.BINARY]), st.binary(max_size=300)),
        max_size=6,
    ),
    st.binary(min_size=4, max_size=4),
    st.integers(1, 50),
)
def test_generated_messages_both_ways(
    messages: list[tuple[Opcode, bytes]], key: bytes, step: int
) -> None:
    messages = [(op, data.hex().encode() if op == Opcode.TEXT else data) for op, data in messages]
    # Module out (server, unmasked) -> reference in.
    wire = b"".join(websocket.encode_frame(op, data) for op, data in messages)
    assert ref_decode(wire) == [(1, op, data) for op, data in messages]
    # Reference out (client, masked, each message split in two fragments) -> module in.
    wire = b""
    for op, data in messages:
        half = len(data) // 2
        wire += ref_encode(0, op, data[:half], key) + ref_encode(1, 0, data[half:], key)
    decoder = websocket.FrameDecoder()
    got = []
    for i in range(0, len(wire), step):
        decoder.feed(wire[i : i + step])
        got += decoder.events()
    assert got == [Message(data, op == Opcode.TEXT) for op, data in messages]


def test_server_messages() -> None:
    assert websocket.encode_message("hé") == h("81 03 68 c3 a9")
    assert websocket.encode_message(b"\x01") == h("82 01 01")
    assert websocket.encode_close(1000, "") == h("88 02 03 e8")
    assert websocket.encode_close(None) == h("88 00")
    # A long reason is cut to the 125-byte control payload, never mid-character.
    frame = websocket.encode_close(1011, "é" * 100)
    assert frame[1] == 2 + 122
    assert ref_decode(frame)[0][2][2:].decode("utf-8") == "é" * 61


@pytest.mark.parametrize(
    ("wire", "code"),
    [
        (h("82 00"), 1002),  # unmasked client frame
        (h("c2 80 00 00 00 00"), 1002),  # RSV1 without an extension
        (h("83 80 00 00 00 00"), 1002),  # opcode 3 is reserved
        (ref_encode(1, Opcode.CONTINUATION, b"x", KEY), 1002),  # continuation of nothing
        (ref_encode(0, Opcode.TEXT, b"a", KEY) + ref_encode(1, Opcode.TEXT, b"b", KEY), 1002),
        (ref_encode(0, Opcode.PING, b"", KEY), 1002),  # fragmented control frame
        (ref_encode(1, Opcode.PING, bytes(126), KEY), 1002),  # control payload over 125
        (h("82 fe 00 05 00 00 00 00") + bytes(5), 1002),  # 16-bit form for a short length
        (h("82 ff 80 00 00 00 00 00 00 00"), 1002),  # 64-bit length with the top bit set
        (ref_encode(1, Opcode.TEXT, b"\xff", KEY), 1007),  # text that is not UTF-8
        (ref_encode(1, Opcode.CLOSE, b"\x03", KEY), 1002),  # 1-byte close body
        (ref_encode(1, Opcode.CLOSE, h("03 ed"), KEY), 1002),  # 1005 is never sent
        (ref_encode(1, Opcode.CLOSE, h("03 e8 ff"), KEY), 1007),  # reason not UTF-8
    ],
)
def test_protocol_errors_close_the_connection(wire: bytes, code: int) -> None:
    decoder = websocket.FrameDecoder()
    decoder.feed(wire)
    with pytest.raises(websocket.WebSocketError) as err:
        list(decoder.events())
    assert err.value.code == code
    with pytest.raises(websocket.WebSocketError):
        decoder.feed(b"x")


def test_utf8_is_checked_across_fragments() -> None:
    # "é" split between two fragments is fine ...
    wire = ref_encode(0, Opcode.TEXT, b"\xc3", KEY) + ref_encode(1, 0, b"\xa9", KEY)
    assert _decode_client(wire) == [Message("é".encode(), text=True)]
    # ... a message ending mid-character is not.
    with pytest.raises(websocket.WebSocketError):
        _decode_client(ref_encode(0, Opcode.TEXT, b"a", KEY) + ref_encode(1, 0, b"\xc3", KEY))


def test_hostile_lengths_are_refused_from_the_header_alone() -> None:
    limits = websocket.Limits(max_frame_payload=1024, max_message=2048)
    decoder = websocket.FrameDecoder(limits)
    decoder.feed(h("82 ff 00 00 00 01 00 00 00 00"))  # claims 4 GiB
    tracemalloc.start()
    try:
        with pytest.raises(websocket.WebSocketError) as err:
            decoder.next_event()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert err.value.code == 1009
    assert peak < 1 << 20
    # A message of many fragments, each within the frame limit, is refused at its limit.
    decoder = websocket.FrameDecoder(limits)
    decoder.feed(ref_encode(0, Opcode.BINARY, bytes(1024), KEY))
    decoder.feed(ref_encode(0, 0, bytes(1024), KEY))
    decoder.feed(ref_encode(1, 0, bytes(1), KEY))
    with pytest.raises(websocket.WebSocketError) as err:
        list(decoder.events())
    assert err.value.code == 1009


# --- the channel protocol ------------------------------------------------------------------


def test_negotiation_follows_the_client_order() -> None:
    offered = channels.offered_protocols(["v5.channel.k8s.io, v4.channel.k8s.io", "x"])
    assert offered == ["v5.channel.k8s.io", "v4.channel.k8s.io", "x"]
    assert channels.negotiate(offered).name == "v5.channel.k8s.io"
    assert channels.negotiate(["v4.base64.channel.k8s.io", "v5.channel.k8s.io"]).base64
    assert channels.negotiate(["base64.channel.k8s.io"]).version == 1
    assert channels.negotiate([]) is channels.NO_PROTOCOL
    assert channels.negotiate(["v9.channel.k8s.io"]) is None


def _codec(name: str) -> channels.ChannelCodec:
    protocol = channels.negotiate([name])
    assert protocol is not None
    return channels.ChannelCodec(protocol)


def test_binary_channel_messages() -> None:
    codec = _codec("v4.channel.k8s.io")
    # stdout "hi": a binary message, channel byte 1 then the data
    assert codec.encode(channels.STDOUT, b"hi") == h("82 03 | 01 | 68 69")
    assert codec.opening([channels.STDOUT, channels.STDERR, channels.ERROR]) == h("82 01 01")
    # stdin "ls\n" from the client
    got = codec.decode(Message(h("00 6c 73 0a")))
    assert got == channels.ChannelData(channels.STDIN, b"ls\n")
    # resize JSON on channel 4
    got = codec.decode(Message(b'\x04{"Width":80,"Height":24}'))
    assert got == channels.ChannelData(channels.RESIZE, b'{"Width":80,"Height":24}')
    assert codec.decode(Message(b"")) is None  # empty: skipped
    assert codec.decode(Message(h("07 00"))) is None  # unknown channel: skipped
    # 255 is just an unknown channel before v5
    assert codec.decode(Message(h("ff 00"))) is None
    with pytest.raises(ValueError):
        codec.encode_close(channels.STDIN)


def test_base64_channel_messages() -> None:
    codec = _codec("v4.base64.channel.k8s.io")
    # stdout "foo\n" ("Zm9vCg=="): a text message, '1' then base64
    assert codec.encode(channels.STDOUT, b"foo\n") == h("81 09") + b"1Zm9vCg=="
    assert codec.opening([channels.STDOUT]) == h("81 01") + b"1"
    got = codec.decode(Message(b"0Zm9vCg==", text=True))
    assert got == channels.ChannelData(channels.STDIN, b"foo\n")
    with pytest.raises(channels.ChannelError):
        codec.decode(Message(b"0Zm9v!!", text=True))


def test_v5_close_signal() -> None:
    codec = _codec("v5.channel.k8s.io")
    assert codec.decode(Message(h("ff 00"))) == channels.ChannelClosed(channels.STDIN)
    assert codec.encode_close(channels.STDOUT) == h("82 02 ff 01")
    for bad in (h("ff"), h("ff 00 00"), h("ff 09")):
        with pytest.raises(channels.ChannelError):
            codec.decode(Message(bad))


def test_channel_frames_through_the_reference() -> None:
    codec = _codec("base64.channel.k8s.io")
    data = bytes(range(256))
    frame = codec.encode(channels.STDERR, data)
    [(fin, opcode, payload)] = ref_decode(frame)
    assert (fin, opcode) == (1, Opcode.TEXT)
    assert payload[:1] == b"2"
    assert base64.b64decode(payload[1:]) == data
    # And a client's masked base64 stdin message through the module's decoder.
    decoder = websocket.FrameDecoder()
    decoder.feed(ref_encode(1, Opcode.TEXT, b"0" + base64.b64encode(data), KEY))
    [message] = decoder.events()
    assert codec.decode(message) == channels.ChannelData(channels.STDIN, data)


def test_pong_event() -> None:
    assert _decode_client(ref_encode(1, Opcode.PONG, b"x", KEY)) == [Pong(b"x")]
