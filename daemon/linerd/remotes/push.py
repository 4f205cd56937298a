"""Uploading to a registry (OCI distribution spec, "push"): blobs, then manifests.

    async with RegistryClient(hosts) as client:
        target = RepositoryPusher(client, parse_reference("reg:5000/team/app:1"))
        if not await target.blob_exists(layer):
            await target.upload_blob(layer, source, mount_from=["library/app"])
        await target.put_manifest(manifest_desc, manifest_bytes)   # children first
        await target.put_manifest(root_desc, root_bytes, tag="1")

The protocol, as docker-registry (distribution 2.8) speaks it:

* ``HEAD /v2/<repo>/blobs/<digest>``: 200 the blob is there (skip), 404 it is not.
* ``POST /v2/<repo>/blobs/uploads/?mount=<digest>&from=<other repo>``: 201 mounted (nothing to
  upload), 202 not mountable: an upload session began, its URL in ``Location``.
* ``POST /v2/<repo>/blobs/uploads/``: 202 with ``Location`` (absolute or relative; it carries a
  signed ``_state`` query that changes with every step: always use the latest ``Location``).
* Small blobs: one ``PUT <location>&digest=<digest>`` with the whole body (201).
* Big blobs: ``PATCH <location>`` chunks with ``Content-Range: <first>-<last>`` (the OCI
  spec's form, no ``bytes`` unit), ``Content-Length`` and
  ``Content-Type: application/octet-stream`` (202, new ``Location``, ``Range: 0-<last>``), then
  an empty ``PUT <location>&digest=<digest>`` (201). Distribution 2.8 does not check the
  Content-Range at all: it appends whatever arrives, so a PATCH must never be replayed.
* ``PUT /v2/<repo>/manifests/<tag or digest>`` with the manifest's media type as Content-Type;
  the registry checks every blob (and, for an index, every child manifest) is there.
* Every success names the stored object in ``Docker-Content-Digest``: checked against ours.

An upload session cannot be resumed after a failed request (distribution cancels a session
whose ``_state`` offset no longer matches what it holds: 404 BLOB_UPLOAD_INVALID, and a replayed
PATCH would append its bytes twice), so a retryable failure in the middle
of an upload starts the blob over with a new session, within the client's retry budget.
Bodies stream from a `BlobSource` (offset, length → async chunks): memory stays bounded by the
source's chunk size, whatever the blob's size.

Auth is the pull side's `Authorizer`, asking for ``repository:<repo>:pull,push`` (plus
``repository:<from>:pull`` for a mount). Only endpoints with the ``push`` capability are used:
the first one (pushing is not spread over mirrors). Nothing here logs a header or a secret.
"""

from __future__ import annotations

import asyncio
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable, Sequence

import structlog

from linerd import errdefs
from linerd.core.types import Descriptor
from linerd.remotes import reference as refs
from linerd.remotes.auth import repository_scope
from linerd.remotes.client import (
    _RETRY_STATUSES,
    Body,
    RegistryClient,
    _error_detail,
    _read_capped,
    _retry_after,
    _Retryable,
)
from linerd.remotes.hosts import Endpoint
from linerd.remotes.httpclient import Response, TransportError

log = structlog.get_logger("linerd.remotes.push")

# Blobs up to this size go up in one PUT; bigger ones in PATCH chunks of CHUNK_SIZE.
MONOLITHIC_MAX = 8 << 20
CHUNK_SIZE = 8 << 20
_RESPONSE_CAP = 64 << 10
OCTET_STREAM = "application/octet-stream"

# (offset, length) -> the blob's bytes in that range, as chunks. Called again on a retry.
BlobSource = Callable[[int, int], AsyncIterator[bytes]]


class _Restart(Exception):
    """Internal: the upload session is lost; start the blob over with a new one."""


class RepositoryPusher:
    """Pushes into one repository (``ref.repository``) of ``ref.host``, through ``client``."""

    def __init__(
        self,
        client: RegistryClient,
        ref: refs.Reference,
        *,
        monolithic_max: int = MONOLITHIC_MAX,
        chunk_size: int = CHUNK_SIZE,
    ) -> None:
        if chunk_size <= 0:
            raise errdefs.InvalidArgument("upload chunk size must be positive")
        self.client = client
        self.ref = ref
        self.monolithic_max = monolithic_max
        self.chunk_size = chunk_size
        self.endpoint: Endpoint = client._endpoints(ref, "push")[0]
        self._scopes = (repository_scope(ref.repository, "pull,push"),)
        # Counters, for tests and logs.
        self.requests: dict[str, int] = {}

    # -- blobs ------------------------------------------------------------------------------

    async def blob_exists(self, desc: Descriptor) -> bool:
        """Whether the repository has ``desc`` (HEAD)."""
        resp = await self._call("HEAD", self._path(f"blobs/{desc.digest}"), ok=(200, 404))
        return resp.status_code == 200

    async def manifest_exists(self, desc: Descriptor) -> bool:
        """Whether the repository has the manifest ``desc`` (HEAD by digest)."""
        resp = await self._call(
            "HEAD",
            self._path(f"manifests/{desc.digest}"),
            headers={"Accept": desc.media_type},
            ok=(200, 404),
        )
        return resp.status_code == 200

    async def upload_blob(
        self,
        desc: Descriptor,
        source: BlobSource,
        *,
        mount_from: Sequence[str] = (),
        on_progress: Callable[[int], None] | None = None,
    ) -> str:
        """Get ``desc`` into the repository: "mounted" (from the first of ``mount_from`` that
        is another repository here) or "uploaded". The caller checked it is not there yet."""
        report = on_progress or (lambda _n: None)
        location: str | None = None
        source_repo = next((r for r in mount_from if r and r != self.ref.repository), None)
        if source_repo is not None:
            location = await self._mount(desc, source_repo)
            if location is None:
                return "mounted"
        started = time.monotonic()
        restarts = 0
        while True:
            if location is None:
                location = await self._start_upload()
            try:
                await self._upload(location, desc, source, report)
                return "uploaded"
            except _Restart as e:
                elapsed = time.monotonic() - started
                if restarts >= self.client.retries or elapsed > self.client.retry_deadline:
                    raise errdefs.Unavailable(
                        f"uploading blob {desc.digest} to {self.endpoint.host}/"
                        f"{self.ref.repository}: {e} (after {restarts + 1} attempts)"
                    ) from None
                restarts += 1
                delay = self.client._delay(restarts)
                log.info(
                    "restarting blob upload",
                    host=self.endpoint.host,
                    digest=desc.digest,
                    error=str(e),
                    delay=delay,
                )
                report(0)
                location = None
                await asyncio.sleep(delay)

    async def _mount(self, desc: Descriptor, source_repo: str) -> str | None:
        """None when mounted; else the upload session the registry began instead."""
        query = urllib.parse.urlencode({"mount": desc.digest, "from": source_repo})
        url = f"{self.endpoint.url(self._path('blobs/uploads/'))}?{query}"
        scopes = (*self._scopes, repository_scope(source_repo, "pull"))
        try:
            resp = await self._call("POST", url, ok=(201, 202), scopes=scopes, body=b"")
        except (errdefs.Unauthenticated, errdefs.PermissionDenied) as e:
            # No pull access to the source repository: a mount is only a shortcut.
            log.info("cross-repository mount refused", digest=desc.digest, error=str(e))
            return await self._start_upload()
        if resp.status_code == 201:
            self._check_digest(resp, desc, "mounted blob")
            return None
        return self._location(resp, url)

    async def _start_upload(self) -> str:
        url = self.endpoint.url(self._path("blobs/uploads/"))
        resp = await self._call("POST", url, ok=(202,), body=b"")
        return self._location(resp, url)

    async def _upload(
        self,
        location: str,
        desc: Descriptor,
        source: BlobSource,
        report: Callable[[int], None],
    ) -> None:
        def body(offset: int, length: int) -> Callable[[], AsyncIterator[bytes]]:
            async def chunks() -> AsyncIterator[bytes]:
                sent = offset
                async for chunk in source(offset, length):
                    yield chunk
                    sent += len(chunk)
                    report(sent)

            return chunks

        headers = {"Content-Type": OCTET_STREAM}
        if desc.size <= self.monolithic_max:
            resp = await self._session(
                "PUT",
                _with_digest(location, desc.digest),
                headers={**headers, "Content-Length": str(desc.size)},
                body=body(0, desc.size) if desc.size else b"",
                ok=(201, 204),
            )
            self._check_digest(resp, desc, "uploaded blob")
            report(desc.size)
            return
        offset = 0
        while offset < desc.size:
            n = min(self.chunk_size, desc.size - offset)
            resp = await self._session(
                "PATCH",
                location,
                headers={
                    **headers,
                    "Content-Range": f"{offset}-{offset + n - 1}",
                    "Content-Length": str(n),
                },
                body=body(offset, n),
                ok=(202, 204),
            )
            have = _range_end(resp.headers.get("Range"))
            if have is not None and have != offset + n:
                raise _Restart(
                    f"the registry holds {have} bytes of the upload, expected {offset + n}"
                )
            location = self._location(resp, location)
            offset += n
            report(offset)
        resp = await self._session(
            "PUT",
            _with_digest(location, desc.digest),
            headers={"Content-Length": "0"},
            body=b"",
            ok=(201, 204),
        )
        self._check_digest(resp, desc, "uploaded blob")

    async def _session(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str],
        body: Body,
        ok: tuple[int, ...],
    ) -> Response:
        """A request inside an upload session: a failure another session may fix restarts."""
        try:
            return await self._call(method, url, headers=headers, body=body, ok=ok, retry=False)
        except errdefs.Unavailable as e:
            raise _Restart(str(e)) from e
        except errdefs.NotFound as e:  # BLOB_UPLOAD_UNKNOWN: the session expired
            raise _Restart(str(e)) from e

    # -- manifests --------------------------------------------------------------------------

    async def put_manifest(self, desc: Descriptor, body: bytes, tag: str | None = None) -> None:
        """PUT ``body`` (the manifest or index ``desc``) under ``tag``, or its digest."""
        if len(body) != desc.size:
            raise errdefs.DataLoss(f"manifest {desc.digest}: {len(body)} bytes, want {desc.size}")
        resp = await self._call(
            "PUT",
            self._path(f"manifests/{tag or desc.digest}"),
            headers={"Content-Type": desc.media_type, "Content-Length": str(len(body))},
            body=body,
            ok=(201, 200, 204),
        )
        self._check_digest(resp, desc, "manifest")

    # -- plumbing ---------------------------------------------------------------------------

    def _path(self, rest: str) -> str:
        return f"{self.ref.repository}/{rest}"

    def _check_digest(self, resp: Response, desc: Descriptor, what: str) -> None:
        got = resp.headers.get("Docker-Content-Digest")
        algorithm = desc.digest.split(":", 1)[0]
        if got and got.startswith(f"{algorithm}:") and got != desc.digest:
            raise errdefs.DataLoss(
                f"{what} {desc.digest}: the registry stored it as {got} "
                f"({self.endpoint.host}/{self.ref.repository})"
            )

    def _location(self, resp: Response, base: str) -> str:
        location = resp.headers.get("Location")
        if not location:
            raise errdefs.FailedPrecondition(
                f"{self.endpoint.host}: upload reply (HTTP {resp.status_code}) without a Location"
            )
        target = urllib.parse.urljoin(base, location.strip())
        scheme = urllib.parse.urlsplit(target).scheme.lower()
        if scheme not in ("http", "https"):
            raise errdefs.FailedPrecondition(f"{self.endpoint.host}: upload Location is not HTTP")
        if urllib.parse.urlsplit(base).scheme.lower() == "https" and scheme == "http":
            raise errdefs.PermissionDenied(
                f"{self.endpoint.host}: refusing an upload Location downgrading HTTPS to HTTP"
            )
        return target

    async def _call(
        self,
        method: str,
        url: str,
        *,
        ok: tuple[int, ...],
        headers: dict[str, str] | None = None,
        body: Body = None,
        scopes: tuple[str, ...] | None = None,
        retry: bool = True,
    ) -> Response:
        """One request with auth, redirects and (unless ``retry`` is off) retries on transport
        errors, 429 and 5xx. Returns a response in ``ok`` with its (small) body read; anything
        else becomes an errdefs error. ``url``: absolute, or a path under the endpoint."""
        ep = self.endpoint
        absolute = "://" in url
        target = url if absolute else ep.url(url)
        scopes = scopes or self._scopes
        what = f"{method} {ep.host}{urllib.parse.urlsplit(target).path}"
        self.requests[method] = self.requests.get(method, 0) + 1
        attempt = 0
        auth_retries = 0
        started = time.monotonic()
        while True:
            attempt += 1
            try:
                authorization = await self.client.auth.authorization(ep, scopes)
                resp, same_origin = await self.client._send(
                    ep, method, target, headers or {}, authorization, body
                )
                status = resp.status_code
                if status == 401 and same_origin:
                    www = resp.headers.get_list("WWW-Authenticate")
                    await resp.aclose()
                    retry_scopes = self.client.auth.on_unauthorized(ep, www, scopes, authorization)
                    if retry_scopes is None or auth_retries >= 2:
                        state = "required" if authorization is None else "failed"
                        raise errdefs.Unauthenticated(
                            f"{ep.host}: authentication {state} for pushing to "
                            f"{self.ref.repository}"
                        )
                    auth_retries += 1
                    scopes = retry_scopes
                    attempt -= 1
                    continue
                if status in _RETRY_STATUSES and status not in ok:
                    retry_after = _retry_after(resp.headers.get("Retry-After"))
                    detail = await _error_detail(resp)
                    await resp.aclose()
                    raise _Retryable(f"HTTP {status}{detail}", retry_after)
            except (TransportError, _Retryable) as e:
                fallback = await self.client._after_failure(
                    ep, what, e, attempt, started, retry=retry
                )
                if fallback is not ep:  # a loopback registry speaking plain HTTP
                    self.endpoint = ep = fallback
                    if not absolute:
                        target = ep.url(url)
                continue
            if status in ok:
                try:
                    if method != "HEAD":
                        await _read_capped(resp, _RESPONSE_CAP, f"{what} reply", _RESPONSE_CAP)
                finally:
                    await resp.aclose()
                return resp
            detail = await _error_detail(resp)
            await resp.aclose()
            raise _status_error(status, what, detail)


def _with_digest(location: str, digest: str) -> str:
    """``location`` plus ``digest=``, keeping its query (``_state``) byte for byte."""
    return f"{location}{'&' if '?' in location else '?'}digest={digest.replace(':', '%3A')}"


def _range_end(value: str | None) -> int | None:
    """``Range: 0-<last>`` of an upload status → bytes held (``0-0`` may mean none, or one
    byte: distribution 2.8 says ``0-0`` for an empty upload, so callers only compare)."""
    if not value:
        return None
    try:
        first, _, last = value.removeprefix("bytes=").partition("-")
        return int(last) + 1 if int(first) == 0 else None
    except ValueError:
        return None


def _status_error(status: int, what: str, detail: str) -> errdefs.LinerError:
    if status == 404:
        return errdefs.NotFound(f"{what}: not found{detail}")
    if status == 401:
        return errdefs.Unauthenticated(f"{what}: HTTP 401 from redirect target{detail}")
    if status == 403:
        return errdefs.PermissionDenied(f"{what}: access denied{detail}")
    if status == 416:
        return errdefs.OutOfRange(f"{what}: range not accepted{detail}")
    if status in (400, 413):
        return errdefs.InvalidArgument(f"{what}: refused (HTTP {status}){detail}")
    if status == 405:
        return errdefs.FailedPrecondition(f"{what}: the registry does not allow it{detail}")
    if status in _RETRY_STATUSES:
        return errdefs.Unavailable(f"{what}: HTTP {status}{detail}")
    return errdefs.FailedPrecondition(f"{what}: unexpected HTTP {status}{detail}")
