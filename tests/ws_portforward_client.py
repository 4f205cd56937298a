"""A WebSocket port-forward client written from Kubernetes' protocol facts, not from linerd's
framing code (so a misreading cannot hide in both halves): RFC 6455 framing (client frames
masked, the server's not); per requested port two channels, 2i data and 2i+1 error; each
message starts with its channel byte (the base64 protocol: an ASCII digit, then base64 of the
data); the server's first message on each channel is the port as two bytes, little endian; a
failure is text on the error channel. Blocking sockets: call it from a thread in async tests.
"""

from __future__ import annotations

import base64
import contextlib
import os
import socket
import struct
from urllib.parse import urlsplit


class WsPortForward:
    """One session: the handshake in the constructor (`status`, `head`), then messages."""

    def __init__(self, url: str, protocol: str = "v4.channel.k8s.io") -> None:
        parts = urlsplit(url)
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=60)
        self.base64 = "base64" in protocol
        key = base64.b64encode(os.urandom(16)).decode()
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        request = (
            f"GET {target} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: {protocol}\r\n\r\n"
        )
        self.sock.sendall(request.encode())
        self.buffer = b""
        while b"\r\n\r\n" not in self.buffer:
            chunk = self.sock.recv(4096)
            assert chunk, self.buffer
            self.buffer += chunk
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        self.status = int(head.split(b" ")[1])
        self.head = head.decode("latin-1")

    def _recv_exact(self, n: int) -> bytes:
        while len(self.buffer) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError
            self.buffer += chunk
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def frame(self) -> tuple[int, bytes]:
        """(opcode, payload) of the next whole message (the server's frames are unmasked)."""
        payload, first_opcode = b"", None
        while True:
            b0, b1 = self._recv_exact(2)
            assert not b1 & 0x80, "a server frame must not be masked"
            length = b1 & 0x7F
            if length == 126:
                (length,) = struct.unpack("!H", self._recv_exact(2))
            elif length == 127:
                (length,) = struct.unpack("!Q", self._recv_exact(8))
            data = self._recv_exact(length)
            opcode = b0 & 0x0F
            if opcode >= 8:  # control frames stand alone
                return opcode, data
            first_opcode = opcode if first_opcode is None else first_opcode
            payload += data
            if b0 & 0x80:
                return first_opcode, payload

    def message(self) -> tuple[int, bytes] | None:
        """(channel, data) of the next data message; None once the server closed."""
        while True:
            try:
                opcode, payload = self.frame()
            except EOFError:
                return None
            if opcode == 8:
                return None
            if opcode in (1, 2) and payload:
                if self.base64:
                    return payload[0] - ord("0"), base64.b64decode(payload[1:])
                return payload[0], payload[1:]

    def send(self, channel: int, data: bytes) -> None:
        if self.base64:
            payload, opcode = bytes([ord("0") + channel]) + base64.b64encode(data), 1
        else:
            payload, opcode = bytes([channel]) + data, 2
        mask = os.urandom(4)
        header = bytes([0x80 | opcode])
        if len(payload) < 126:
            header += bytes([0x80 | len(payload)])
        elif len(payload) < 1 << 16:
            header += bytes([0x80 | 126]) + struct.pack("!H", len(payload))
        else:
            header += bytes([0x80 | 127]) + struct.pack("!Q", len(payload))
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(header + mask + masked)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            mask = os.urandom(4)
            code = struct.pack("!H", 1000)
            masked = bytes(b ^ mask[i] for i, b in enumerate(code))
            self.sock.sendall(bytes([0x88, 0x82]) + mask + masked)
        self.sock.close()
