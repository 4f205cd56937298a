"""Reading simple-signing signatures from a lookaside store (file:// or http(s)://).

``signature-1``, ``signature-2``, ... are read until the first one that does not exist (a
missing file, an HTTP 404). Each is bounded in size, their number is bounded, and an HTTP
redirect is followed only within the same origin (scheme, host, port).
"""

from __future__ import annotations

import asyncio
import urllib.parse

from linerd.policy.refs import DockerRef
from linerd.policy.registriesd import lookaside_url
from linerd.remotes.httpclient import HTTPClient, HTTPError

MAX_SIGNATURE_BYTES = 4 << 20
MAX_SIGNATURES = 128
MAX_REDIRECTS = 5
HTTP_TIMEOUT = 30.0


class LookasideError(Exception):
    """Signatures could not be read; the message says where and why."""


def _read_file(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_SIGNATURE_BYTES + 1)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        raise LookasideError(f"cannot read signature {path}: {e.strerror or e}") from None
    if len(data) > MAX_SIGNATURE_BYTES:
        raise LookasideError(f"signature {path} is larger than {MAX_SIGNATURE_BYTES} bytes")
    return data


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urllib.parse.urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), port


async def _read_http(client: HTTPClient, url: str) -> bytes | None:
    origin = _origin(url)
    for _hop in range(MAX_REDIRECTS + 1):
        response = await client.send("GET", url, {"Accept": "*/*"})
        try:
            if response.status_code == 404:
                return None
            if response.status_code in (301, 302, 303, 307, 308) and (
                "location" in response.headers
            ):
                location = response.headers.get("location", "")
                target = urllib.parse.urljoin(url, location)
                if _origin(target) != origin:
                    raise LookasideError(
                        f"signature {url} redirects to another origin ({target}): refused"
                    )
                url = target
                continue
            if response.status_code != 200:
                raise LookasideError(f"signature {url}: HTTP {response.status_code}")
            length = response.headers.get("content-length")
            if length is not None and length.isdigit() and int(length) > MAX_SIGNATURE_BYTES:
                raise LookasideError(f"signature {url} is larger than {MAX_SIGNATURE_BYTES} bytes")
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_SIGNATURE_BYTES:
                    raise LookasideError(
                        f"signature {url} is larger than {MAX_SIGNATURE_BYTES} bytes"
                    )
            return bytes(body)
        finally:
            await response.aclose()
    raise LookasideError(f"signature {url}: more than {MAX_REDIRECTS} redirects")


async def fetch_signatures(
    base: str,
    ref: DockerRef,
    manifest_digest: str,
    *,
    client: HTTPClient | None = None,
) -> list[bytes]:
    """All signatures stored for ``manifest_digest`` of ``ref``'s repository under ``base``."""
    scheme = urllib.parse.urlsplit(base).scheme
    if scheme not in ("file", "http", "https"):
        raise LookasideError(f"lookaside {base!r}: unsupported URL scheme")
    own_client = None
    if scheme != "file" and client is None:
        own_client = client = HTTPClient(timeout=HTTP_TIMEOUT)

    async def read(url: str) -> bytes | None:
        if scheme == "file":
            path = urllib.parse.unquote(urllib.parse.urlsplit(url).path)
            return await asyncio.to_thread(_read_file, path)
        assert client is not None
        try:
            return await _read_http(client, url)
        except HTTPError as e:
            raise LookasideError(f"signature {url}: {e}") from None

    out: list[bytes] = []
    try:
        for index in range(1, MAX_SIGNATURES + 2):
            data = await read(lookaside_url(base, ref, manifest_digest, index))
            if data is None:
                break
            if index > MAX_SIGNATURES:
                # Refuse rather than silently ignore some of them.
                raise LookasideError(f"more than {MAX_SIGNATURES} signatures in {base}")
            out.append(data)
    finally:
        if own_client is not None:
            await own_client.aclose()
    return out
