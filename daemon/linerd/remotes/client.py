"""An async OCI distribution client: resolve, fetch manifests, stream blobs.

One `HTTPClient` (liner's own, `linerd.remotes.httpclient`) per distinct TLS configuration.
Every response body is read with a bound: manifests are capped (4 MiB default), blobs never
past their descriptor's size, token responses at 1 MiB. Digests are checked as bytes arrive,
and the last chunk of a blob is only handed out once the whole blob checked out, so a
consumer never holds a complete wrong blob.

Hashing happens inline on the event loop: chunks are at most a few hundred KiB and
sha256 runs at ~1 GB/s, so each update blocks the loop for well under a millisecond; moving it
to a thread would cost more in hand-offs than it saves. Callers that re-hash large existing
prefixes (resuming an ingest) should do that in a thread.

Redirects are followed by hand (blob GETs often redirect to storage elsewhere): the
``Authorization`` header goes only to the endpoint's own origin, and an HTTPS → HTTP downgrade
is refused.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import os
import random
import ssl
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any

import structlog

import linerd
from liner_common import mediatypes
from linerd import errdefs
from linerd.content.documents import MAX_DOCUMENT
from linerd.core.types import Descriptor
from linerd.remotes import reference as refs
from linerd.remotes.auth import MAX_TOKEN_RESPONSE, Authorizer, repository_scope
from linerd.remotes.failures import Retryable as _Retryable
from linerd.remotes.failures import classify
from linerd.remotes.hosts import Endpoint, HostsConfig, TLSConfig
from linerd.remotes.httpclient import (
    HTTPClient,
    HTTPError,
    Response,
    Timeout,
    TransportError,
    default_ssl_context,
    system_ssl_context,
)

if TYPE_CHECKING:
    from hashlib import _Hash

log = structlog.get_logger("linerd.remotes")

MEDIA_TYPE_OCI_MANIFEST = mediatypes.OCI_MANIFEST
MEDIA_TYPE_OCI_INDEX = mediatypes.OCI_INDEX
MEDIA_TYPE_DOCKER_MANIFEST = mediatypes.DOCKER_MANIFEST
MEDIA_TYPE_DOCKER_LIST = mediatypes.DOCKER_LIST
MANIFEST_MEDIA_TYPES = (
    MEDIA_TYPE_OCI_MANIFEST,
    MEDIA_TYPE_OCI_INDEX,
    MEDIA_TYPE_DOCKER_MANIFEST,
    MEDIA_TYPE_DOCKER_LIST,
)
ACCEPT_MANIFESTS = ", ".join(MANIFEST_MEDIA_TYPES)
MAX_MANIFEST_SIZE = MAX_DOCUMENT  # what the store reads back, it accepts
MAX_REDIRECTS = 5
DEFAULT_TIMEOUT = Timeout(30.0, connect=10.0)
# A client lives across pulls (linerd.remotes.pool): a few idle connections are kept for the
# next pull (a burst of pulls does not leave dozens open), each at most this long.
MAX_IDLE_CONNECTIONS = 4
IDLE_EXPIRY = 30.0
# A blob transfer must move at least 1 MiB per 64 s (16 KiB/s) or it is given up.
MIN_RATE = (1 << 20, 64.0)
_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
_ERROR_BODY_LIMIT = 4096


# A request body: bytes, or a factory of an async byte stream (called again on a resend).
Body = bytes | Callable[[], AsyncIterator[bytes]] | None
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


def hasher_for(digest: str) -> _Hash:
    """A fresh hashlib object for ``digest``'s algorithm (sha256, sha384, sha512)."""
    refs.validate_digest(digest)
    return hashlib.new(digest.split(":", 1)[0])


def _media_type(header: str | None) -> str:
    return (header or "").split(";", 1)[0].strip().lower()


def sniff_manifest_media_type(body: bytes) -> str:
    """The media type of a manifest whose server did not say (or said something generic)."""
    try:
        doc = json.loads(body)
    except ValueError:
        raise errdefs.InvalidArgument("manifest is not JSON") from None
    if not isinstance(doc, dict):
        raise errdefs.InvalidArgument("manifest is not a JSON object")
    media_type = doc.get("mediaType")
    if isinstance(media_type, str) and media_type:
        return media_type
    if "manifests" in doc:
        return MEDIA_TYPE_OCI_INDEX
    if "config" in doc and "layers" in doc:
        return MEDIA_TYPE_OCI_MANIFEST
    raise errdefs.InvalidArgument("cannot tell the manifest's media type")


def ssl_context(tls: TLSConfig) -> ssl.SSLContext:
    """System trust plus configured CAs; client certificates; verification unless skipped.
    Built once per configuration and files' state (a context holds the CAs it parsed, and
    every pull makes a client, the CRI's included). The default configuration shares the
    process's one context (`default_ssl_context`: token servers, policy lookasides and
    registries alike); the system's CAs are looked up per handshake (`system_ssl_context`)."""
    if tls == _DEFAULT_TLS:
        return default_ssl_context()
    stamps = []
    for path in (*tls.ca, *(f for pair in tls.client for f in pair if f)):
        try:
            st = os.stat(path)
            stamps.append((path, st.st_mtime_ns, st.st_size))
        except OSError:
            stamps.append((path, 0, -1))  # missing: load_* below says so
    return _ssl_context(tls, tuple(stamps))


@functools.lru_cache(maxsize=16)
def _ssl_context(tls: TLSConfig, _files: tuple[tuple[str, int, int], ...]) -> ssl.SSLContext:
    ctx = system_ssl_context()
    try:
        for ca in tls.ca:
            ctx.load_verify_locations(cafile=ca)
        for cert, key in tls.client:
            ctx.load_cert_chain(cert, key or None)
    except (OSError, ssl.SSLError) as e:
        raise errdefs.InvalidArgument(f"registry TLS configuration: {e}") from None
    if tls.skip_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


_DEFAULT_TLS = TLSConfig()


def _origin(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) with the scheme's default port filled in."""
    u = urllib.parse.urlsplit(url)
    scheme = u.scheme.lower()
    try:
        port = u.port
    except ValueError:
        port = None
    return (scheme, (u.hostname or "").lower(), port or {"http": 80, "https": 443}.get(scheme))


class RegistryClient:
    """Talks to registries as `HostsConfig` directs. Use as ``async with RegistryClient(...)``.

    Retries: what a retry can fix (see `linerd.remotes.failures`: resets, timeouts, 429 and
    5xx) is retried with exponential backoff (with jitter, honouring a Retry-After up to
    ``backoff_max``), at most ``retries`` extra attempts and not past ``retry_deadline``
    seconds from the first attempt. A loopback endpoint that answers TLS in plain HTTP is
    switched to plain HTTP (see `Endpoint.http_fallback`), for the rest of this client's life.
    """

    def __init__(
        self,
        hosts: HostsConfig | None = None,
        *,
        max_manifest_size: int = MAX_MANIFEST_SIZE,
        max_token_response: int = MAX_TOKEN_RESPONSE,
        retries: int = 4,
        backoff: float = 0.2,
        backoff_max: float = 5.0,
        retry_deadline: float = 60.0,
        timeout: Timeout | float = DEFAULT_TIMEOUT,
        user_agent: str | None = None,
        min_rate: tuple[int, float] = MIN_RATE,
        trust_env: bool = True,
    ) -> None:
        self.hosts = hosts or HostsConfig()
        self.max_manifest_size = max_manifest_size
        self.retries = retries
        self.backoff = backoff
        self.backoff_max = backoff_max
        self.retry_deadline = retry_deadline
        self._timeout = timeout
        self.min_rate = min_rate
        # The version from the one place it is written (pyproject.toml, see linerd.__init__).
        self._user_agent = user_agent or f"liner/{linerd.__version__}"
        self._trust_env = trust_env
        # Per TLS configuration: its connections. A CA or client certificate file that
        # changes makes a new SSL context (`ssl_context`), and new connections with it.
        self._clients: dict[TLSConfig, HTTPClient] = {}
        self._plain_hosts: set[str] = set()  # loopback hosts found to speak plain HTTP
        self.auth = Authorizer(
            self.hosts, self._token_transport, max_token_response=max_token_response
        )

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for c in clients:
            await c.aclose()

    def _http(self, tls: TLSConfig) -> HTTPClient:
        client = self._clients.get(tls)
        if client is None:
            # The SSL context is asked for at each HTTPS request (a plain-HTTP registry never
            # loads one); redirects are followed by hand (see the module docstring).
            client = self._clients[tls] = HTTPClient(
                ssl_context=functools.partial(ssl_context, tls),
                timeout=self._timeout,
                headers=[("User-Agent", self._user_agent)],
                trust_env=self._trust_env,
                max_idle=MAX_IDLE_CONNECTIONS,
                idle_expiry=IDLE_EXPIRY,
            )
        return client

    # -- public API -----------------------------------------------------------------------

    async def resolve(self, ref: str | refs.Reference) -> tuple[str, Descriptor]:
        """Resolve a tag or digest to (canonical name, descriptor of the manifest or index)."""
        r = _ref(ref)
        last: errdefs.LinerError | None = None
        for ep in self._endpoints(r, "resolve"):
            try:
                return str(r), await self._resolve_at(ep, r)
            except errdefs.LinerError as e:
                log.debug("resolve failed at endpoint", host=ep.host, ref=str(r), error=str(e))
                last = e
        assert last is not None
        raise last

    async def resolve_and_fetch(self, ref: str | refs.Reference) -> tuple[Descriptor, bytes]:
        """Resolve a tag or digest with one GET: the descriptor of the manifest or index and
        its bytes, hashed here (a digest reference's digest and a Docker-Content-Digest are
        checked against them). One request where `resolve` and `fetch_manifest` take two,
        for a caller that will want the bytes (a pull of a manifest it does not have)."""
        r = _ref(ref)
        last: errdefs.LinerError | None = None
        for ep in self._endpoints(r, "resolve"):
            try:
                return await self._get_manifest_at(ep, r)
            except errdefs.LinerError as e:
                log.debug("resolve failed at endpoint", host=ep.host, ref=str(r), error=str(e))
                last = e
        assert last is not None
        raise last

    async def fetch_manifest(
        self,
        ref: str | refs.Reference,
        desc: Descriptor | None = None,
        *,
        max_size: int | None = None,
    ) -> bytes:
        """The manifest (or index) bytes of ``desc`` (resolved from ``ref`` when omitted),
        digest-verified; refused with InvalidArgument when over ``max_size``."""
        r = _ref(ref)
        if desc is None:
            _, desc = await self.resolve(r)
        cap = self.max_manifest_size if max_size is None else max_size
        hasher = hasher_for(desc.digest)
        if desc.size > cap:
            raise errdefs.InvalidArgument(
                f"manifest {desc.digest} is {desc.size} bytes, over the {cap}-byte limit"
            )
        last: errdefs.LinerError | None = None
        for ep in self._endpoints(r, "pull"):
            try:
                resp = await self._request(
                    ep, "GET", f"{r.repository}/manifests/{desc.digest}", r, ACCEPT_MANIFESTS
                )
                try:
                    body = await _read_capped(resp, desc.size, f"manifest {desc.digest}", cap)
                finally:
                    await resp.aclose()
                hasher.update(body)
                if len(body) != desc.size:
                    raise errdefs.DataLoss(
                        f"manifest {desc.digest}: size mismatch: got {len(body)} bytes, "
                        f"want {desc.size}"
                    )
                if f"{hasher.name}:{hasher.hexdigest()}" != desc.digest:
                    raise errdefs.DataLoss(f"manifest {desc.digest}: digest mismatch")
                return body
            except errdefs.LinerError as e:
                hasher = hasher_for(desc.digest)
                last = e
        assert last is not None
        raise last

    async def fetch_blob(
        self,
        ref: str | refs.Reference,
        desc: Descriptor,
        *,
        offset: int = 0,
        hasher: _Hash | None = None,
        check_digest: bool = True,
    ) -> AsyncIterator[bytes]:
        """Stream the bytes of ``desc`` from ``offset`` on, checking size and digest.

        ``check_digest=False``: the caller hashes what it stores and checks the digest
        itself (a content ingest's commit does), so the bytes are not hashed twice, and here
        on the event loop; only the size is checked.

        ``ref`` names the repository (tag/digest ignored). Resuming (``offset`` > 0): pass a
        ``hasher`` already fed the first ``offset`` bytes (it is updated in place) to have the
        digest checked here; without it only the size is checked, unless the server ignores
        the Range and sends everything, in which case the whole blob is hashed after all.
        Interrupted transfers are resumed with Range requests, within the retry budget.
        Mismatch → errdefs.DataLoss; nothing past ``desc.size`` is ever yielded, and the final
        chunk only after the digest checked out. Use with ``contextlib.aclosing``.
        """
        r = _ref(ref)
        if offset < 0 or offset > desc.size:
            raise errdefs.InvalidArgument(f"offset {offset} outside blob of {desc.size} bytes")
        if hasher is None and offset == 0 and check_digest:
            hasher = hasher_for(desc.digest)
        else:
            hasher_for(desc.digest)  # validate the digest either way
        state = _BlobState(desc, offset, hasher, self.min_rate, check_digest)
        if offset == desc.size:
            state.finish()
            return
        kind = "manifests" if desc.media_type in MANIFEST_MEDIA_TYPES else "blobs"
        path = f"{r.repository}/{kind}/{desc.digest}"
        accept = ACCEPT_MANIFESTS if kind == "manifests" else "*/*"
        endpoints = self._endpoints(r, "pull")
        index = 0
        resumes = 0
        started = time.monotonic()
        while True:
            ep = endpoints[index]
            try:
                resp = await self._request(ep, "GET", path, r, accept, offset=state.pos)
            except errdefs.LinerError:
                # Another endpoint may have it, as long as nothing was handed out yet.
                if state.pos == offset and index + 1 < len(endpoints):
                    index += 1
                    continue
                raise
            try:
                async for piece in state.consume(resp):
                    yield piece
                return
            except (TransportError, _Retryable) as e:
                if resumes >= self.retries or time.monotonic() - started > self.retry_deadline:
                    raise errdefs.Unavailable(
                        f"blob {desc.digest}: transfer from {ep.host} interrupted at byte "
                        f"{state.pos} of {desc.size}: {_describe(e)}"
                    ) from None
                resumes += 1
                log.info(
                    "resuming interrupted blob transfer",
                    host=ep.host,
                    digest=desc.digest,
                    offset=state.pos,
                    error=_describe(e),
                )
                await asyncio.sleep(self._delay(resumes))
            finally:
                await resp.aclose()

    # -- internals ------------------------------------------------------------------------

    def _endpoints(self, r: refs.Reference, capability: str) -> list[Endpoint]:
        endpoints = [
            ep.as_plain_http() if ep.http_fallback and ep.host in self._plain_hosts else ep
            for ep in self.hosts.endpoints_for(r.host, capability)
        ]
        if not endpoints:
            raise errdefs.FailedPrecondition(f"no registry endpoint of {r.host} can {capability}")
        return endpoints

    async def _resolve_at(self, ep: Endpoint, r: refs.Reference) -> Descriptor:
        path = f"{r.repository}/manifests/{r.object}"
        resp = await self._request(ep, "HEAD", path, r, ACCEPT_MANIFESTS, head_ok=True)
        await resp.aclose()
        if resp.status_code == 200:
            media_type = _media_type(resp.headers.get("Content-Type"))
            header_digest = resp.headers.get("Docker-Content-Digest")
            length = resp.headers.get("Content-Length")
            digest = r.digest or header_digest
            if (
                media_type in MANIFEST_MEDIA_TYPES
                and digest
                and (r.digest is None or header_digest in (None, r.digest))
                and length is not None
                and length.isdigit()
            ):
                size = int(length)
                refs.validate_digest(digest)
                if size > self.max_manifest_size:
                    raise errdefs.InvalidArgument(
                        f"{r}: manifest is {size} bytes, over the "
                        f"{self.max_manifest_size}-byte limit"
                    )
                return Descriptor(media_type, digest, size)
        # HEAD said too little (or is not allowed): GET the manifest and hash it ourselves.
        desc, _ = await self._get_manifest_at(ep, r)
        return desc

    async def _get_manifest_at(self, ep: Endpoint, r: refs.Reference) -> tuple[Descriptor, bytes]:
        path = f"{r.repository}/manifests/{r.object}"
        resp = await self._request(ep, "GET", path, r, ACCEPT_MANIFESTS)
        try:
            cap = self.max_manifest_size
            body = await _read_capped(resp, cap, f"{r}: manifest", cap)
        finally:
            await resp.aclose()
        algorithm = (r.digest or "sha256").split(":", 1)[0]
        digest = f"{algorithm}:{hashlib.new(algorithm, body).hexdigest()}"
        if r.digest is not None and digest != r.digest:
            raise errdefs.DataLoss(f"manifest {r.digest}: digest mismatch")
        header_digest = resp.headers.get("Docker-Content-Digest")
        if header_digest and header_digest.startswith(f"{algorithm}:") and header_digest != digest:
            raise errdefs.DataLoss(f"{r}: manifest does not match its Docker-Content-Digest")
        media_type = _media_type(resp.headers.get("Content-Type"))
        if media_type not in MANIFEST_MEDIA_TYPES:
            media_type = sniff_manifest_media_type(body)
        return Descriptor(media_type, digest, len(body)), body

    def _delay(self, attempt: int, retry_after: float | None = None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.backoff_max)
        base = min(self.backoff * (2 ** (attempt - 1)), self.backoff_max)
        return base * (0.5 + random.random() / 2)  # jitter: spread out concurrent retries

    async def _request(
        self,
        ep: Endpoint,
        method: str,
        path: str,
        r: refs.Reference,
        accept: str,
        *,
        offset: int = 0,
        head_ok: bool = False,
    ) -> Response:
        """Send with auth, retries and redirects; return a 200/206 response, open for
        streaming (the caller closes it). Non-success statuses become errdefs errors.

        ``head_ok``: for a HEAD, return non-404 4xx responses too (the caller falls back to
        GET), since some registries refuse HEAD on manifests.
        """
        scopes = (repository_scope(r.repository),)
        headers = {"Accept": accept, "Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        auth_retries = 0
        attempt = 0
        started = time.monotonic()
        what = f"{method} {ep.host}/{path}"
        while True:
            attempt += 1
            try:
                authorization = await self.auth.authorization(ep, scopes)
                resp, same_origin = await self._send(
                    ep, method, ep.url(path), headers, authorization
                )
                status = resp.status_code
                if status == 401 and same_origin:
                    www = resp.headers.get_list("WWW-Authenticate")
                    await resp.aclose()
                    retry_scopes = self.auth.on_unauthorized(ep, www, scopes, authorization)
                    if retry_scopes is None or auth_retries >= 2:
                        if authorization is None:
                            raise errdefs.Unauthenticated(
                                f"{ep.host}: authentication required for {r.repository}"
                            )
                        raise errdefs.Unauthenticated(
                            f"{ep.host}: authentication failed for {r.repository}"
                        )
                    auth_retries += 1
                    scopes = retry_scopes
                    attempt -= 1  # an auth round trip is not a failure
                    continue
                if status in _RETRY_STATUSES:
                    retry_after = _retry_after(resp.headers.get("Retry-After"))
                    detail = await _error_detail(resp)
                    raise _Retryable(f"HTTP {status}{detail}", retry_after)
            except (TransportError, _Retryable) as e:
                ep = await self._after_failure(ep, what, e, attempt, started)
                continue
            if status in (200, 206):
                return resp
            if head_ok and method == "HEAD" and status not in (401, 403, 404):
                return resp
            detail = await _error_detail(resp)
            await resp.aclose()
            if status == 404:
                obj = path.rsplit("/", 1)[-1]
                joined = f"{r.name}{'@' if ':' in obj else ':'}{obj}"
                raise errdefs.NotFound(f"{joined}: not found{detail}")
            if status == 401:
                raise errdefs.Unauthenticated(f"{what}: HTTP 401 from redirect target{detail}")
            if status == 403:
                raise errdefs.PermissionDenied(f"{what}: access denied{detail}")
            if status == 416:
                raise errdefs.OutOfRange(f"{what}: range not satisfiable{detail}")
            if status == 400:
                raise errdefs.InvalidArgument(f"{what}: bad request{detail}")
            raise errdefs.FailedPrecondition(f"{what}: unexpected HTTP {status}{detail}")

    async def _after_failure(
        self,
        ep: Endpoint,
        what: str,
        e: BaseException,
        attempt: int,
        started: float,
        *,
        retry: bool = True,
    ) -> Endpoint:
        """After attempt number ``attempt`` of ``what`` failed with ``e``: the endpoint for the
        next attempt (after the backoff), or the errdefs error that ends the request."""
        failure = classify(e, ep.host, what)
        if failure.plain_http and ep.http_fallback:
            log.info("registry speaks plain HTTP: falling back", host=ep.host)
            self._plain_hosts.add(ep.host)
            return ep.as_plain_http()
        elapsed = time.monotonic() - started
        if not (failure.retry and retry):
            raise errdefs.Unavailable(failure.message) from None
        if attempt > self.retries or elapsed > self.retry_deadline:
            raise errdefs.Unavailable(f"{failure.message} (after {attempt} attempts)") from None
        delay = self._delay(attempt, getattr(e, "retry_after", None))
        log.info("retrying registry request", request=what, error=failure.message, delay=delay)
        await asyncio.sleep(delay)
        return ep

    async def _send(
        self,
        ep: Endpoint,
        method: str,
        url: str,
        headers: dict[str, str],
        authorization: str | None,
        body: Body = None,
    ) -> tuple[Response, bool]:
        """One logical request, following redirects by hand (credentials only to the
        endpoint's own origin, never HTTPS to HTTP; a request with a body follows only
        307/308, which resend it); returns the final (streaming) response and whether it came
        from the endpoint's own origin."""
        client = self._http(ep.tls)
        origin = _origin(ep.base_url)
        current = url
        for _hop in range(MAX_REDIRECTS + 1):
            here = _origin(current)
            same_origin = here == origin
            h = dict(headers)
            if same_origin:
                h.update(ep.headers)
                if authorization is not None:
                    h["Authorization"] = authorization
            resp = await client.send(method, current, h, body)
            log.debug("registry response", method=method, host=here[1], status=resp.status_code)
            if resp.status_code not in _REDIRECTS:
                return resp, same_origin
            location = resp.headers.get("Location")
            await resp.aclose()
            if not location:
                raise errdefs.FailedPrecondition(f"{ep.host}: redirect without a Location")
            target = urllib.parse.urljoin(current, location.strip())
            target_scheme = urllib.parse.urlsplit(target).scheme.lower()
            if target_scheme not in ("http", "https"):
                raise errdefs.FailedPrecondition(f"{ep.host}: redirect to a non-HTTP URL")
            if here[0] == "https" and target_scheme == "http":
                raise errdefs.PermissionDenied(f"{ep.host}: refusing redirect from HTTPS to HTTP")
            if method not in ("GET", "HEAD") and resp.status_code in (301, 302, 303):
                raise errdefs.FailedPrecondition(
                    f"{ep.host}: {method} redirected with HTTP {resp.status_code} "
                    "(only 307/308 keep the request)"
                )
            current = target
        raise errdefs.FailedPrecondition(f"{ep.host}: more than {MAX_REDIRECTS} redirects")

    async def _token_transport(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        params: list[tuple[str, str]],
        form: dict[str, str] | None,
        cap: int,
    ) -> tuple[int, bytes]:
        """The Authorizer's HTTP: default TLS (realms are public services), retries on
        connect errors/429/5xx, no redirects (they would carry the credentials along)."""
        client = self._http(_DEFAULT_TLS)
        host = urllib.parse.urlsplit(url).netloc
        if params:
            url = f"{url}{'&' if '?' in url else '?'}{urllib.parse.urlencode(params)}"
        body: bytes | None = None
        if form is not None:
            body = urllib.parse.urlencode(form).encode()
            headers = {**headers, "Content-Type": "application/x-www-form-urlencoded"}
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            try:
                resp = await client.send(method, url, headers, body)
                try:
                    if resp.status_code in _RETRY_STATUSES:
                        raise _Retryable(f"HTTP {resp.status_code}")
                    if resp.status_code != 200:
                        return resp.status_code, b""
                    try:
                        body = await _read_capped(resp, cap, f"token response from {host}", cap)
                    except errdefs.InvalidArgument:
                        raise errdefs.Unauthenticated(
                            f"token response from {host} is over {cap} bytes"
                        ) from None
                    return 200, body
                finally:
                    await resp.aclose()
            except (TransportError, _Retryable) as e:
                failure = classify(e, host, f"token server {host}")
                if not failure.retry:
                    raise errdefs.Unavailable(failure.message) from None
                if attempt > self.retries or time.monotonic() - started > self.retry_deadline:
                    raise errdefs.Unavailable(
                        f"{failure.message} (after {attempt} attempts)"
                    ) from None
                await asyncio.sleep(self._delay(attempt))


class _BlobState:
    """Position, hashing and checks of one blob transfer across resumed requests."""

    def __init__(
        self,
        desc: Descriptor,
        offset: int,
        hasher: _Hash | None,
        min_rate: tuple[int, float] = (0, 0.0),
        check_digest: bool = True,
    ) -> None:
        self.desc = desc
        self.pos = offset
        self.hasher = hasher
        self.check_digest = check_digest
        # (bytes, seconds): a transfer slower than that over a whole window is given up, so a
        # trickling server cannot hold a pull forever (each read still arrives in time).
        self.min_bytes, self.window = min_rate
        self._window_start = time.monotonic()
        self._window_pos = offset

    def _check_rate(self) -> None:
        if not self.window:
            return
        now = time.monotonic()
        if now - self._window_start < self.window:
            return
        if self.pos - self._window_pos < self.min_bytes:
            raise errdefs.Unavailable(
                f"blob {self.desc.digest}: transfer too slow ({self.pos - self._window_pos} "
                f"bytes in {now - self._window_start:.0f} s)"
            )
        self._window_start, self._window_pos = now, self.pos

    def finish(self) -> None:
        if self.hasher is None:
            return  # resumed without the prefix's hash: the caller checks the digest
        if f"{self.hasher.name}:{self.hasher.hexdigest()}" != self.desc.digest:
            raise errdefs.DataLoss(f"blob {self.desc.digest}: digest mismatch")

    async def consume(self, resp: Response) -> AsyncIterator[bytes]:
        desc = self.desc
        if resp.status_code == 206:
            start = _content_range_start(resp.headers.get("Content-Range"), desc)
            if start != self.pos:
                raise errdefs.DataLoss(
                    f"blob {desc.digest}: server sent range from {start}, asked {self.pos}"
                )
        hash_prefix = False
        if resp.status_code != 206:
            start = 0
            if self.pos > 0 and self.hasher is None and self.check_digest:
                # The server ignored Range and sends it all: hash it all, so we check after all.
                self.hasher = hasher_for(desc.digest)
                hash_prefix = True
        length = resp.headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) != desc.size - start:
            # Refuse before reading: the server announces a different blob.
            raise errdefs.DataLoss(
                f"blob {desc.digest}: size mismatch: server announces {int(length) + start} "
                f"bytes, want {desc.size}"
            )
        received = start  # absolute position of the next byte from the server
        async for chunk in resp.aiter_bytes():
            if received + len(chunk) > desc.size:
                raise errdefs.DataLoss(
                    f"blob {desc.digest}: more data than the declared size {desc.size}"
                )
            if received < self.pos:
                # Bytes before our position (a full response to a Range request): skip them,
                # hashing them only if our hasher has not seen them yet.
                cut = min(self.pos - received, len(chunk))
                if hash_prefix and self.hasher is not None:
                    self.hasher.update(chunk[:cut])
                received += cut
                chunk = chunk[cut:]
                if not chunk:
                    continue
            received += len(chunk)
            if self.hasher is not None:
                self.hasher.update(chunk)
            self.pos += len(chunk)
            if self.pos == desc.size:
                self.finish()
            else:
                self._check_rate()
            yield chunk
        if self.pos < desc.size:
            raise _Retryable(f"connection closed at byte {self.pos} of {desc.size}")


def _content_range_start(value: str | None, desc: Descriptor) -> int:
    # "bytes 100-999/1000"
    try:
        unit, _, spec = (value or "").partition(" ")
        span, _, total = spec.partition("/")
        first = int(span.split("-", 1)[0])
        if unit != "bytes" or (total not in ("*", "") and int(total) != desc.size):
            raise ValueError
    except ValueError:
        raise errdefs.DataLoss(f"blob {desc.digest}: invalid Content-Range in reply") from None
    return first


async def _read_capped(resp: Response, limit: int, what: str, cap: int) -> bytes:
    """Read a body of at most ``limit`` bytes; refuse a bigger one as soon as it shows
    (by Content-Length, before reading; else after ``limit`` + 1 bytes).

    Over ``cap`` is InvalidArgument (a limit of ours); over a smaller known ``limit`` (the
    descriptor's size) is DataLoss (the server sends something else than announced).
    """

    def too_big(n: int | None) -> errdefs.LinerError:
        if limit >= cap:
            shown = f"{n} bytes" if n is not None else "more bytes"
            return errdefs.InvalidArgument(f"{what} is {shown}, over the {cap}-byte limit")
        return errdefs.DataLoss(f"{what}: more data than the declared size {limit}")

    length = resp.headers.get("Content-Length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise too_big(int(length))
    buf = bytearray()
    async for chunk in resp.aiter_bytes():
        buf += chunk
        if len(buf) > limit:
            raise too_big(None)
    return bytes(buf)


async def _error_detail(resp: Response) -> str:
    """A short ": CODE: message" from a registry error body (never headers: no secrets)."""
    try:
        body = b""
        async for chunk in resp.aiter_bytes():
            body += chunk
            if len(body) > _ERROR_BODY_LIMIT:
                return ""
        if b"HTTP request to an HTTPS server" in body:
            # Go's answer to plain HTTP on a TLS port (a fixed hint: the body is not echoed).
            return ": the registry speaks HTTPS, not plain HTTP"
        errors = json.loads(body).get("errors") or []
        first: dict[str, Any] = errors[0]
        code, message = str(first.get("code", "")), str(first.get("message", ""))
        return f": {code}: {message}"[:200] if code or message else ""
    except (ValueError, AttributeError, IndexError, TypeError, KeyError, HTTPError):
        return ""


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


def _describe(e: BaseException) -> str:
    text = str(e)
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _ref(ref: str | refs.Reference) -> refs.Reference:
    return ref if isinstance(ref, refs.Reference) else refs.parse(ref)
