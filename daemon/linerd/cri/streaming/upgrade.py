"""The HTTP upgrade that opens a streaming session, decided from the request head alone.

A streaming URL is reached by an HTTP/1.1 request asking to switch to SPDY/3.1 (client-go,
crictl, kubelet's proxy) or to WebSocket (clients speaking the channel protocol). This
module answers the request: which transport, which subprotocol, and the exact response
head to send (101 on success, else the error Kubernetes' own server sends). Pure: no
socket, no HTTP parser; the caller hands in the method and the header lines.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from linerd.cri.streaming import channels, websocket

# Remote command over SPDY, newest first (v5 is not offered over SPDY, as in containerd).
REMOTECOMMAND_SPDY = ("v4.channel.k8s.io", "v3.channel.k8s.io", "v2.channel.k8s.io")
REMOTECOMMAND_SPDY += ("channel.k8s.io",)
PORTFORWARD_SPDY = ("portforward.k8s.io",)

_REASONS = {
    101: "Switching Protocols",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    426: "Upgrade Required",
    431: "Request Header Fields Too Large",
}


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""

    def head(self) -> bytes:
        """The response as bytes; a body, if any, with its length (then the caller closes)."""
        lines = [f"HTTP/1.1 {self.status} {_REASONS.get(self.status, 'Error')}"]
        lines += [f"{name}: {value}" for name, value in self.headers]
        if self.status != 101:
            lines += [
                "Content-Type: text/plain; charset=utf-8",
                f"Content-Length: {len(self.body)}",
            ]
            lines += ["Connection: close"]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + self.body


@dataclass(frozen=True, slots=True)
class Upgrade:
    """A request the server switches for: `transport` "spdy" or "websocket"."""

    transport: str
    protocol: str  # the negotiated subprotocol ("" for a WebSocket client that named none)
    response: Response
    channel_protocol: channels.ChannelProtocol | None = None  # WebSocket only


def _values(headers: Iterable[tuple[str, str]], name: str) -> list[str]:
    """Every comma-separated token of every header line called `name`, in order."""
    wanted = name.lower()
    return [
        token.strip()
        for key, value in headers
        if key.strip().lower() == wanted
        for token in value.split(",")
        if token.strip()
    ]


def _error(status: int, message: str, *headers: tuple[str, str]) -> Response:
    return Response(status, tuple(headers), (message + "\n").encode())


def negotiate(
    method: str,
    headers: Sequence[tuple[str, str]],
    spdy_protocols: Sequence[str],
    websocket_protocols: Sequence[channels.ChannelProtocol] = (),
) -> Upgrade | Response:
    """Decide on a request to a streaming URL: an `Upgrade`, or the error `Response`.

    `spdy_protocols` lists what this endpoint speaks over SPDY (remotecommand or
    portforward); `websocket_protocols` what it speaks over WebSocket (none: SPDY only).
    """
    upgrade = [u.lower() for u in _values(headers, "upgrade")]
    if "upgrade" not in [c.lower() for c in _values(headers, "connection")] or not upgrade:
        return _error(400, "unable to upgrade: missing upgrade headers in request")
    if "websocket" in upgrade and websocket_protocols:
        return _websocket(method, headers, websocket_protocols)
    if not any(u.startswith("spdy/3.1") for u in upgrade):
        return _error(400, f"unable to upgrade: unsupported protocol {upgrade!r}")
    if method not in ("GET", "POST"):
        return _error(405, f"method {method} not allowed")
    offered = _values(headers, "x-stream-protocol-version")
    if not offered:
        return _error(400, "unable to upgrade: X-Stream-Protocol-Version is required")
    chosen = next((p for p in offered if p in spdy_protocols), None)
    if chosen is None:
        accepted = tuple(("X-Accepted-Stream-Protocol-Versions", p) for p in spdy_protocols)
        return _error(403, f"unable to upgrade: no common protocol in {offered}", *accepted)
    response = Response(
        101,
        (
            ("Connection", "Upgrade"),
            ("Upgrade", "SPDY/3.1"),
            ("X-Stream-Protocol-Version", chosen),
        ),
    )
    return Upgrade("spdy", chosen, response)


def _websocket(
    method: str, headers: Sequence[tuple[str, str]], supported: Sequence[channels.ChannelProtocol]
) -> Upgrade | Response:
    if method != "GET":  # RFC 6455, 4.1: the opening handshake is a GET
        return _error(405, "a WebSocket handshake is a GET")
    version = _values(headers, "sec-websocket-version")
    if version != ["13"]:
        return _error(426, "WebSocket version 13 required", ("Sec-WebSocket-Version", "13"))
    keys = _values(headers, "sec-websocket-key")
    if len(keys) != 1 or not websocket.valid_client_key(keys[0]):
        return _error(400, "bad Sec-WebSocket-Key")
    chosen = channels.negotiate(_values(headers, "sec-websocket-protocol"), supported)
    if chosen is None:
        return _error(403, "requested WebSocket subprotocols are not supported")
    response_headers = [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Accept", websocket.accept_key(keys[0])),
    ]
    if chosen.name:
        response_headers.append(("Sec-WebSocket-Protocol", chosen.name))
    return Upgrade("websocket", chosen.name, Response(101, tuple(response_headers)), chosen)
