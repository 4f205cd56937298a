"""Registry authorization: anonymous, basic, and the docker bearer-token flow.

The flow (docker's token spec, distribution/docs/spec/auth/token.md):

1. A request without credentials gets ``401`` with ``WWW-Authenticate: Bearer realm="…",
   service="…",scope="…"`` (or ``Basic realm="…"``). `Authorizer.on_unauthorized` records it
   per endpoint host.
2. For Bearer, GET ``realm?service=…&scope=…`` (basic-auth'd with the host's credentials if
   any), or POST an OAuth2 refresh-token form when an identity token is configured; the answer's
   ``token`` (or ``access_token``) goes in ``Authorization: Bearer …`` on the retry.
3. Tokens are cached per (realm, service, scopes) until shortly before they expire, and
   concurrent requests for one key share a single token request.

Where credentials go: only to the endpoint host they are configured for (`HostsConfig.auths`),
and to that host's token realm when the realm is HTTPS or on the same host name (the realm is
the registry's own delegate, as with registry-1.docker.io → auth.docker.io; a plain-HTTP realm
elsewhere would expose them on the wire). Nothing here logs or raises with a secret in it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

import structlog

from linerd import errdefs
from linerd.remotes.hosts import Credentials, Endpoint, HostsConfig

log = structlog.get_logger("linerd.remotes.auth")

MAX_TOKEN_RESPONSE = 1 << 20
# The spec's default lifetime when a token response has no expires_in.
DEFAULT_TOKEN_LIFETIME = 60.0
# Renew this long before expiry so a token does not lapse between check and use.
EXPIRY_MARGIN = 10.0


@dataclass(frozen=True, slots=True)
class Challenge:
    """One ``WWW-Authenticate`` challenge; ``scheme`` is lower case ("basic", "bearer")."""

    scheme: str
    params: Mapping[str, str] = field(default_factory=dict)


_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_CHALLENGE_RE = re.compile(rf"\s*({_TOKEN})\s*")
_PARAM_RE = re.compile(rf'\s*({_TOKEN})\s*=\s*(?:"((?:[^"\\]|\\.)*)"|({_TOKEN}))\s*,?')


def parse_www_authenticate(values: list[str]) -> list[Challenge]:
    """Parse ``WWW-Authenticate`` header values (one may hold several challenges)."""
    challenges: list[Challenge] = []
    for value in values:
        pos = 0
        while pos < len(value):
            m = _CHALLENGE_RE.match(value, pos)
            if not m:
                break
            scheme, pos = m.group(1).lower(), m.end()
            params: dict[str, str] = {}
            while pos < len(value):
                p = _PARAM_RE.match(value, pos)
                if not p:
                    break
                # A token followed by "=" is a parameter; otherwise it starts a new challenge.
                raw = p.group(2)
                params[p.group(1).lower()] = (
                    re.sub(r"\\(.)", r"\1", raw) if raw is not None else p.group(3)
                )
                pos = p.end()
            challenges.append(Challenge(scheme, params))
            while pos < len(value) and value[pos] in ", ":
                pos += 1
    return challenges


def basic_header(creds: Credentials) -> str:
    return "Basic " + base64.b64encode(f"{creds.username}:{creds.password}".encode()).decode()


def repository_scope(repository: str, actions: str = "pull") -> str:
    return f"repository:{repository}:{actions}"


# (method, url, headers, query params, form or None, byte cap) -> (status, body)
TokenTransport = Callable[
    [str, str, dict[str, str], list[tuple[str, str]], dict[str, str] | None, int],
    Awaitable[tuple[int, bytes]],
]


@dataclass(slots=True)
class _Token:
    value: str = field(repr=False)
    expires_at: float  # time.monotonic()


class Authorizer:
    """Per-daemon auth state: challenges seen per endpoint host, and the token cache."""

    def __init__(
        self,
        hosts: HostsConfig,
        transport: TokenTransport,
        *,
        max_token_response: int = MAX_TOKEN_RESPONSE,
        client_id: str = "liner",
    ) -> None:
        self._hosts = hosts
        self._transport = transport
        self._max_token_response = max_token_response
        self._client_id = client_id
        self._challenges: dict[str, Challenge] = {}
        self._tokens: dict[tuple[str, str, tuple[str, ...]], _Token] = {}
        self._locks: dict[tuple[str, str, tuple[str, ...]], asyncio.Lock] = {}
        self.token_requests = 0  # for tests and metrics

    async def authorization(self, endpoint: Endpoint, scopes: tuple[str, ...]) -> str | None:
        """The ``Authorization`` header value for a request to ``endpoint``, if any."""
        creds = endpoint.credentials
        if creds is not None and creds.registrytoken:
            return f"Bearer {creds.registrytoken}"
        challenge = self._challenges.get(endpoint.host)
        if challenge is None:
            if creds is not None and creds.preemptive_basic and creds.has_basic:
                return basic_header(creds)
            return None
        if challenge.scheme == "basic":
            return basic_header(creds) if creds is not None and creds.has_basic else None
        token = await self._token(endpoint, challenge, scopes)
        return f"Bearer {token}"

    def on_unauthorized(
        self,
        endpoint: Endpoint,
        www_authenticate: list[str],
        scopes: tuple[str, ...],
        sent: str | None = None,
    ) -> tuple[str, ...] | None:
        """Record the challenge of a 401; return the scopes to retry with, or None to give up.

        ``sent`` is the Authorization value the refused request carried: a cached token equal
        to it was refused (revoked or expired early) and is dropped. Only that one: concurrent
        requests sent before any token existed also come back 401, and must not evict the
        token another task just fetched.
        """
        challenges = parse_www_authenticate(www_authenticate)
        bearer = next((c for c in challenges if c.scheme == "bearer"), None)
        basic = next((c for c in challenges if c.scheme == "basic"), None)
        if bearer is not None and bearer.params.get("realm"):
            self._challenges[endpoint.host] = Challenge(
                "bearer",
                {"realm": bearer.params["realm"], "service": bearer.params.get("service", "")},
            )
            key = self._key(self._challenges[endpoint.host], scopes)
            cached = self._tokens.get(key)
            if cached is not None and sent == f"Bearer {cached.value}":
                del self._tokens[key]
            # The registry may ask for more than we asked (e.g. a cross-repository mount).
            wanted = set(scopes)
            wanted.update(s for s in bearer.params.get("scope", "").split(" ") if s)
            return tuple(sorted(wanted))
        if basic is not None:
            creds = endpoint.credentials
            if creds is None or not creds.has_basic:
                return None
            self._challenges[endpoint.host] = Challenge("basic")
            return scopes
        return None

    def _key(
        self, challenge: Challenge, scopes: tuple[str, ...]
    ) -> tuple[str, str, tuple[str, ...]]:
        return (
            challenge.params["realm"],
            challenge.params.get("service", ""),
            tuple(sorted(scopes)),
        )

    def _realm_credentials(self, endpoint: Endpoint, realm: str) -> Credentials | None:
        parts = urllib.parse.urlsplit(realm)
        own = self._hosts.credentials_for(parts.netloc)
        if own is not None:
            return own
        creds = endpoint.credentials
        if creds is None:
            return None
        endpoint_name = urllib.parse.urlsplit(endpoint.base_url).hostname
        if parts.scheme == "https" or parts.hostname == endpoint_name:
            return creds
        log.warning(
            "not sending credentials to a plain-HTTP token realm on another host",
            registry=endpoint.host,
            realm_host=parts.netloc,
        )
        return None

    async def _token(
        self, endpoint: Endpoint, challenge: Challenge, scopes: tuple[str, ...]
    ) -> str:
        key = self._key(challenge, scopes)
        cached = self._tokens.get(key)
        if cached is not None and cached.expires_at > time.monotonic():
            return cached.value
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            # Another task may have fetched it while we waited.
            cached = self._tokens.get(key)
            if cached is not None and cached.expires_at > time.monotonic():
                return cached.value
            token = await self._fetch_token(endpoint, challenge, key[2])
            self._tokens[key] = token
            return token.value

    async def _fetch_token(
        self, endpoint: Endpoint, challenge: Challenge, scopes: tuple[str, ...]
    ) -> _Token:
        realm = challenge.params["realm"]
        parts = urllib.parse.urlsplit(realm)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise errdefs.Unauthenticated(f"{endpoint.host}: invalid token realm")
        service = challenge.params.get("service", "")
        creds = self._realm_credentials(endpoint, realm)
        headers: dict[str, str] = {"Accept": "application/json"}
        params: list[tuple[str, str]] = []
        form: dict[str, str] | None = None
        if creds is not None and creds.identitytoken:
            # OAuth2 refresh-token grant (what `docker login` identity tokens are for).
            method = "POST"
            form = {
                "grant_type": "refresh_token",
                "refresh_token": creds.identitytoken,
                "service": service,
                "client_id": self._client_id,
                "scope": " ".join(scopes),
            }
        else:
            method = "GET"
            if service:
                params.append(("service", service))
            params.extend(("scope", s) for s in scopes)
            if creds is not None and creds.has_basic:
                params.append(("account", creds.username))
                headers["Authorization"] = basic_header(creds)
        self.token_requests += 1
        log.debug("requesting registry token", realm_host=parts.netloc, scopes=list(scopes))
        started = time.monotonic()
        status, body = await self._transport(
            method, realm, headers, params, form, self._max_token_response
        )
        if status in (401, 403):
            raise errdefs.Unauthenticated(
                f"{endpoint.host}: token server {parts.netloc} refused the credentials "
                f"(HTTP {status})"
            )
        if status != 200:
            raise errdefs.Unauthenticated(
                f"{endpoint.host}: token server {parts.netloc} answered HTTP {status}"
            )
        try:
            doc = json.loads(body)
            value = doc.get("token") or doc.get("access_token")
            expires_in = float(doc.get("expires_in") or DEFAULT_TOKEN_LIFETIME)
        except (ValueError, AttributeError, TypeError):
            raise errdefs.Unauthenticated(
                f"{endpoint.host}: token server {parts.netloc} sent an invalid response"
            ) from None
        if not isinstance(value, str) or not value:
            raise errdefs.Unauthenticated(
                f"{endpoint.host}: token server {parts.netloc} sent no token"
            )
        # Measure from when we asked (monotonic), not the server's issued_at: clocks differ.
        lifetime = max(expires_in, DEFAULT_TOKEN_LIFETIME) - EXPIRY_MARGIN
        return _Token(value, started + lifetime)
