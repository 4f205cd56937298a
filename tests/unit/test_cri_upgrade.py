"""The streaming server's HTTP upgrade decision (linerd.cri.streaming.upgrade).

Expected answers follow Kubernetes' own streaming server (apimachinery httpstream for
SPDY, wsstream for WebSocket) as shared/reference/cri.md records them, and RFC 6455 4.2.
crictl's real requests go through the same function in tests/unit/test_spdy_crictl.py.
"""

from __future__ import annotations

import pytest

from linerd.cri.streaming import channels, upgrade

pytestmark = pytest.mark.unit

SPDY = [("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1")]
EXEC = upgrade.REMOTECOMMAND_SPDY


def test_spdy_picks_the_clients_first_supported_protocol() -> None:
    headers = [
        *SPDY,
        ("X-Stream-Protocol-Version", "v5.channel.k8s.io"),
        ("X-Stream-Protocol-Version", "v4.channel.k8s.io"),
        ("X-Stream-Protocol-Version", "v3.channel.k8s.io, v2.channel.k8s.io"),
    ]
    result = upgrade.negotiate("POST", headers, EXEC)
    assert isinstance(result, upgrade.Upgrade)
    assert (result.transport, result.protocol) == ("spdy", "v4.channel.k8s.io")
    assert result.response.head() == (
        b"HTTP/1.1 101 Switching Protocols\r\n"
        b"Connection: Upgrade\r\n"
        b"Upgrade: SPDY/3.1\r\n"
        b"X-Stream-Protocol-Version: v4.channel.k8s.io\r\n"
        b"\r\n"
    )
    # The client's order wins over the server's.
    headers = [*SPDY, ("x-stream-protocol-version", "channel.k8s.io,v4.channel.k8s.io")]
    result = upgrade.negotiate("GET", headers, EXEC)
    assert isinstance(result, upgrade.Upgrade)
    assert result.protocol == "channel.k8s.io"
    # Header names and the Connection token list are case-insensitive.
    headers = [
        ("connection", "keep-alive, upgrade"),
        ("UPGRADE", "spdy/3.1"),
        ("X-Stream-Protocol-Version", "portforward.k8s.io"),
    ]
    result = upgrade.negotiate("POST", headers, upgrade.PORTFORWARD_SPDY)
    assert isinstance(result, upgrade.Upgrade)
    assert result.protocol == "portforward.k8s.io"


def test_spdy_refusals() -> None:
    missing = upgrade.negotiate("POST", [("X-Stream-Protocol-Version", "v4.channel.k8s.io")], EXEC)
    assert isinstance(missing, upgrade.Response)
    assert missing.status == 400
    no_protocol = upgrade.negotiate("POST", SPDY, EXEC)
    assert isinstance(no_protocol, upgrade.Response)
    assert no_protocol.status == 400
    none_common = upgrade.negotiate(
        "POST", [*SPDY, ("X-Stream-Protocol-Version", "portforward.k8s.io")], EXEC
    )
    assert isinstance(none_common, upgrade.Response)
    assert none_common.status == 403
    head = none_common.head()
    assert head.startswith(b"HTTP/1.1 403 Forbidden\r\n")
    for protocol in EXEC:
        assert f"X-Accepted-Stream-Protocol-Versions: {protocol}\r\n".encode() in head
    body = head.split(b"\r\n\r\n", 1)[1]
    assert f"Content-Length: {len(body)}\r\n".encode() in head
    wrong = upgrade.negotiate("POST", [("Connection", "Upgrade"), ("Upgrade", "h2c")], EXEC)
    assert isinstance(wrong, upgrade.Response)
    assert wrong.status == 400


WS = [
    ("Host", "127.0.0.1"),
    ("Upgrade", "websocket"),
    ("Connection", "Upgrade"),
    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ("Sec-WebSocket-Version", "13"),
]


def test_websocket_handshake() -> None:
    headers = [*WS, ("Sec-WebSocket-Protocol", "v4.base64.channel.k8s.io, v4.channel.k8s.io")]
    result = upgrade.negotiate("GET", headers, EXEC, channels.REMOTECOMMAND_PROTOCOLS)
    assert isinstance(result, upgrade.Upgrade)
    assert result.transport == "websocket"
    assert result.channel_protocol is not None
    assert result.channel_protocol.base64
    # The accept value of RFC 6455's own example key (1.3).
    assert result.response.head() == (
        b"HTTP/1.1 101 Switching Protocols\r\n"
        b"Upgrade: websocket\r\n"
        b"Connection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
        b"Sec-WebSocket-Protocol: v4.base64.channel.k8s.io\r\n"
        b"\r\n"
    )
    # No subprotocol: the unversioned binary one, and no Sec-WebSocket-Protocol answer.
    result = upgrade.negotiate("GET", WS, EXEC, channels.REMOTECOMMAND_PROTOCOLS)
    assert isinstance(result, upgrade.Upgrade)
    assert result.channel_protocol is channels.NO_PROTOCOL
    assert b"Sec-WebSocket-Protocol" not in result.response.head()


@pytest.mark.parametrize(
    ("method", "headers", "status"),
    [
        ("POST", WS, 405),
        ("GET", [*WS[:4], ("Sec-WebSocket-Version", "8")], 426),
        ("GET", [*WS[:3], ("Sec-WebSocket-Key", "c2hvcnQ="), WS[4]], 400),
        ("GET", [*WS, ("Sec-WebSocket-Protocol", "v9.channel.k8s.io")], 403),
    ],
)
def test_websocket_refusals(method: str, headers: list[tuple[str, str]], status: int) -> None:
    result = upgrade.negotiate(method, headers, EXEC, channels.REMOTECOMMAND_PROTOCOLS)
    assert isinstance(result, upgrade.Response)
    assert result.status == status
    if status == 426:
        assert b"Sec-WebSocket-Version: 13\r\n" in result.head()


def test_websocket_is_refused_where_only_spdy_is_served() -> None:
    result = upgrade.negotiate("GET", WS, upgrade.PORTFORWARD_SPDY)
    assert isinstance(result, upgrade.Response)
    assert result.status == 400
