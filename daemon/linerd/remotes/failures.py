"""What a failed registry request means to a person, and whether another attempt can help.

Only what a retry can fix is retried: a reset or closed connection, a timeout, an unreachable
network, a temporary name-resolution failure, HTTP 429 and 5xx. A closed port (connection
refused), an unknown host, a certificate the configuration does not trust and a server that
answers TLS in plain HTTP fail at once, as containerd's resolver does (Go's HTTP client does
not retry them either): five attempts against a closed port only delay the same answer.
"""

from __future__ import annotations

import errno
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass

from linerd.remotes import httpclient as http

# OpenSSL's reasons when the peer's first bytes are not a TLS record: a plain HTTP server's
# "HTTP/1.1 400" answer to the ClientHello.
_PLAIN_HTTP_REASONS = frozenset({"WRONG_VERSION_NUMBER", "HTTP_REQUEST", "RECORD_LAYER_FAILURE"})
_RETRIED_ERRNOS = {
    errno.ECONNRESET: "connection reset",
    errno.ECONNABORTED: "connection aborted",
    errno.EPIPE: "connection closed",
    errno.ETIMEDOUT: "connection timed out",
    errno.ENETUNREACH: "network is unreachable",
    errno.EHOSTUNREACH: "no route to host",
    errno.ENETDOWN: "network is down",
}


class Retryable(Exception):
    """An attempt failed in a way another attempt may fix (HTTP 429, 5xx, a cut transfer)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class Failure:
    message: str  # for a person: what happened, and what to do where that is known
    retry: bool
    plain_http: bool = False  # the server answered TLS in plain HTTP
    tls_verify: bool = False


def plain_http_hint(host: str) -> str:
    return (
        f"registry {host} speaks plain HTTP, not HTTPS: use --plain-http, or mark it plain "
        f'HTTP in the hosts configuration (server = "http://{host}" in its hosts.toml, or '
        f'plain_http = true under [registry.hosts."{host}"])'
    )


def _chain(e: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    cause: BaseException | None = e
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        yield cause
        cause = cause.__cause__ or cause.__context__


def classify(e: BaseException, host: str, what: str) -> Failure:
    """``e`` from one attempt of ``what`` (``GET host/path``) against registry ``host``."""
    if isinstance(e, Retryable):
        return Failure(f"{what}: {e}", retry=True)
    for cause in _chain(e):
        if isinstance(cause, ssl.SSLCertVerificationError):
            reason = cause.verify_message or cause.reason or str(cause)
            return Failure(
                f"registry {host}: TLS verification failed (configure a CA for {host}, or "
                f"skip_verify): {reason}",
                retry=False,
                tls_verify=True,
            )
        if isinstance(cause, ssl.SSLError):
            if cause.reason in _PLAIN_HTTP_REASONS:
                return Failure(plain_http_hint(host), retry=False, plain_http=True)
            return Failure(
                f"registry {host}: TLS handshake failed: {cause.reason or cause}", retry=False
            )
        if isinstance(cause, ConnectionRefusedError):
            return Failure(f"cannot reach registry {host}: connection refused", retry=False)
        if isinstance(cause, socket.gaierror):
            if cause.errno == socket.EAI_AGAIN:
                return Failure(
                    f"cannot reach registry {host}: temporary failure in name resolution",
                    retry=True,
                )
            if cause.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", None)):
                return Failure(f"cannot reach registry {host}: no such host", retry=False)
            return Failure(f"cannot reach registry {host}: {cause.strerror}", retry=False)
        if isinstance(cause, OSError) and cause.errno in _RETRIED_ERRNOS:
            return Failure(
                f"cannot reach registry {host}: {_RETRIED_ERRNOS[cause.errno]}", retry=True
            )
    if isinstance(e, http.ConnectTimeout):
        return Failure(f"cannot reach registry {host}: connection timed out", retry=True)
    if isinstance(e, http.TimeoutException):
        return Failure(f"registry {host} stopped answering ({what}): timed out", retry=True)
    if isinstance(e, http.ProxyError):
        return Failure(f"registry {host} through the proxy: {e}", retry=False)
    if isinstance(e, http.RemoteProtocolError | http.ReadError | http.WriteError):
        return Failure(f"registry {host} closed the connection ({what}): {_text(e)}", retry=True)
    return Failure(f"{what}: {_text(e)}", retry=True)


def _text(e: BaseException) -> str:
    text = str(e)
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
