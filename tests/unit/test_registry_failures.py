"""Registry failures as a person reads them, which are retried, and loopback's plain HTTP."""

from __future__ import annotations

import errno
import socket
import ssl

import pytest

from linerd.remotes import httpclient as http
from linerd.remotes.failures import Retryable, classify
from linerd.remotes.hosts import HostsConfig, is_loopback

pytestmark = pytest.mark.unit

WHAT = "GET 127.0.0.1:5000/library/busybox/manifests/latest"


def wrapped(cause: BaseException, outer: type[http.TransportError] = http.ConnectError):
    """With the OS or ssl error as the cause of the cause (as httpx raised them)."""
    try:
        try:
            raise cause
        except BaseException as inner:
            raise OSError("All connection attempts failed") from inner
    except OSError as middle:
        error = outer(str(cause))
        error.__cause__ = middle
        return error


def ssl_error(reason: str) -> ssl.SSLError:
    e = ssl.SSLError(1, f"[SSL: {reason}] {reason.lower()} (_ssl.c:1006)")
    e.reason = reason  # type: ignore[misc]
    return e


def test_plain_http_answer_to_tls_is_not_retried_and_names_the_way_out() -> None:
    failure = classify(wrapped(ssl_error("WRONG_VERSION_NUMBER")), "127.0.0.1:5103", WHAT)
    assert failure.plain_http and not failure.retry
    assert failure.message.startswith("registry 127.0.0.1:5103 speaks plain HTTP, not HTTPS")
    assert "--plain-http" in failure.message
    assert 'server = "http://127.0.0.1:5103"' in failure.message
    assert "WRONG_VERSION_NUMBER" not in failure.message


def test_untrusted_certificate_is_not_retried() -> None:
    e = ssl.SSLCertVerificationError(1, "certificate verify failed")
    e.verify_message = "self-signed certificate"  # type: ignore[misc]
    failure = classify(wrapped(e), "reg:443", WHAT)
    assert not failure.retry and failure.tls_verify
    assert failure.message == (
        "registry reg:443: TLS verification failed (configure a CA for reg:443, or "
        "skip_verify): self-signed certificate"
    )


@pytest.mark.parametrize(
    ("cause", "message", "retry"),
    [
        (
            ConnectionRefusedError(errno.ECONNREFUSED, "Connect call failed"),
            "cannot reach registry 127.0.0.1:9: connection refused",
            False,
        ),
        (
            socket.gaierror(socket.EAI_NONAME, "Name or service not known"),
            "cannot reach registry 127.0.0.1:9: no such host",
            False,
        ),
        (
            socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution"),
            "cannot reach registry 127.0.0.1:9: temporary failure in name resolution",
            True,
        ),
        (
            ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"),
            "cannot reach registry 127.0.0.1:9: connection reset",
            True,
        ),
        (
            OSError(errno.ENETUNREACH, "Network is unreachable"),
            "cannot reach registry 127.0.0.1:9: network is unreachable",
            True,
        ),
    ],
)
def test_connection_failures(cause: OSError, message: str, retry: bool) -> None:
    failure = classify(wrapped(cause), "127.0.0.1:9", WHAT)
    assert (failure.message, failure.retry) == (message, retry)


def test_timeouts_and_cut_connections_are_retried() -> None:
    failure = classify(http.ConnectTimeout("timed out"), "r:1", WHAT)
    assert failure.retry and failure.message == "cannot reach registry r:1: connection timed out"
    failure = classify(http.ReadTimeout("timed out"), "r:1", WHAT)
    assert failure.retry and failure.message.startswith("registry r:1 stopped answering")
    failure = classify(http.RemoteProtocolError("peer closed connection"), "r:1", WHAT)
    assert failure.retry and failure.message.startswith("registry r:1 closed the connection")


def test_status_failures_are_retried() -> None:
    failure = classify(Retryable("HTTP 503", retry_after=1.0), "r:1", WHAT)
    assert failure.retry and failure.message == f"{WHAT}: HTTP 503"


@pytest.mark.parametrize(
    ("netloc", "expected"),
    [
        ("localhost:5000", True),
        ("LOCALHOST", True),
        ("127.0.0.1:5000", True),
        ("127.1.2.3", True),
        ("[::1]:5000", True),
        ("::1", True),
        ("10.0.0.1:5000", False),
        ("registry.example:5000", False),
        ("[fe80::1]:5000", False),
    ],
)
def test_is_loopback(netloc: str, expected: bool) -> None:
    assert is_loopback(netloc) is expected


def test_loopback_falls_back_to_plain_http_unless_configured() -> None:
    [ep] = HostsConfig().endpoints_for("127.0.0.1:5000")
    assert ep.scheme == "https" and ep.http_fallback
    assert ep.as_plain_http().base_url == "http://127.0.0.1:5000/v2"
    assert not ep.as_plain_http().http_fallback
    [ep] = HostsConfig().endpoints_for("localhost:5000")
    assert ep.http_fallback
    # not loopback: HTTPS only
    [ep] = HostsConfig().endpoints_for("registry.example:5000")
    assert not ep.http_fallback
    # the configuration said which scheme: no fallback
    hosts = HostsConfig.from_dict({"hosts": {"127.0.0.1:5000": {"plain_http": False}}})
    assert not hosts.endpoints_for("127.0.0.1:5000")[0].http_fallback
    hosts = HostsConfig.from_dict(
        {"hosts": {"127.0.0.1:5000": {"server": "https://127.0.0.1:5000"}}}
    )
    assert not hosts.endpoints_for("127.0.0.1:5000")[0].http_fallback
    [ep] = HostsConfig(plain_http=True).endpoints_for("127.0.0.1:5000")
    assert ep.scheme == "http" and not ep.http_fallback
    # a scheme-less loopback mirror falls back too
    hosts = HostsConfig.from_dict({"hosts": {"docker.io": {"host": {"localhost:5001": {}}}}})
    mirror, hub = hosts.endpoints_for("docker.io")
    assert mirror.http_fallback and not hub.http_fallback
