"""Per-registry host configuration, in the spirit of containerd's hosts.toml.

Two sources, the first that knows a registry wins:

1. The daemon config's ``[registry]`` table (`HostsConfig.from_dict`)::

       [registry]
       config_path = "/etc/liner/certs.d"   # optional hosts.toml directory, see 2.
       plain_http = false                     # like ``--plain-http``: default scheme http
       [registry.hosts."docker.io"]           # same keys as a hosts.toml
       server = "https://registry-1.docker.io"
       [registry.hosts."docker.io".host."https://mirror:5000"]
       capabilities = ["pull", "resolve"]
       ca = "/etc/liner/mirror-ca.pem"        # or a list
       client = [["/etc/liner/c.pem", "/etc/liner/c.key"]]
       skip_verify = false
       header = { X-Custom = "v" }
       [registry.auths."mirror:5000"]         # credentials, by endpoint host[:port]
       username = "u"
       password = "p"                         # or identitytoken = "...", or auth = b64(u:p)

2. ``<config_path>/<host>/hosts.toml`` (then ``<config_path>/_default/hosts.toml``), with
   containerd's keys: ``server``, top-level ``capabilities``/``ca``/``client``/``skip_verify``/
   ``header``/``override_path`` (for the server), and ``[host."<url>"]`` tables for mirrors.
   Relative ``ca``/``client`` paths are relative to the hosts.toml's directory.

Liner adds ``plain_http`` (per registry or per host entry) for a scheme-less URL, and
``preemptive_basic`` in an auths entry: send basic credentials without waiting for a 401.

A loopback registry (``localhost``, 127.0.0.0/8, ``::1``) reached through a scheme-less URL
whose plain HTTP nothing configured (no ``plain_http`` anywhere, no ``http://``/``https://``
server) is tried over HTTPS first and over plain HTTP when it answers TLS in plain HTTP, as
Docker and nerdctl do. ``plain_http = false`` for that registry keeps it HTTPS only.

`HostsConfig.endpoints_for(host)` gives the mirrors in order, then the server.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import ipaddress
import tomllib
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from linerd import errdefs
from linerd.remotes.reference import DEFAULT_HOST, DOCKER_HUB_API_HOST

CAPABILITIES = frozenset({"pull", "resolve", "push"})


@dataclass(frozen=True, slots=True)
class Credentials:
    """Credentials for one endpoint host. Secrets are kept out of repr (and so out of logs)."""

    username: str = ""
    password: str = field(default="", repr=False)
    identitytoken: str = field(default="", repr=False)
    # Send basic auth on the first request instead of waiting for a 401 asking for it.
    preemptive_basic: bool = False
    # A bearer token for the registry itself, sent as is (the CRI's AuthConfig.registry_token).
    registrytoken: str = field(default="", repr=False)

    @property
    def has_basic(self) -> bool:
        return bool(self.username or self.password)


@dataclass(frozen=True, slots=True)
class TLSConfig:
    """TLS for one endpoint: verification is on unless ``skip_verify``."""

    ca: tuple[str, ...] = ()
    # (certificate file, key file); key "" when the certificate file also holds the key.
    client: tuple[tuple[str, str], ...] = ()
    skip_verify: bool = False


@dataclass(frozen=True, slots=True)
class HostEntry:
    """One host (the server or a mirror) as configured."""

    url: str
    capabilities: frozenset[str] = CAPABILITIES
    tls: TLSConfig = TLSConfig()
    headers: tuple[tuple[str, str], ...] = ()
    override_path: bool = False
    plain_http: bool | None = None


@dataclass(frozen=True, slots=True)
class RegistryHosts:
    """The configuration of one registry name: optional server override and mirrors."""

    server: HostEntry | None = None
    mirrors: tuple[HostEntry, ...] = ()
    plain_http: bool | None = None


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A concrete place to talk to: ``base_url`` ends at the API root (normally ``.../v2``)."""

    base_url: str
    host: str  # host[:port] of base_url: the key credentials are looked up by
    capabilities: frozenset[str]
    tls: TLSConfig
    credentials: Credentials | None = None
    headers: tuple[tuple[str, str], ...] = ()
    is_mirror: bool = False
    # HTTPS first, then plain HTTP if the server answers TLS in plain HTTP: an unconfigured
    # loopback registry, as Docker and nerdctl treat localhost and 127.0.0.0/8.
    http_fallback: bool = False

    def as_plain_http(self) -> Endpoint:
        """This endpoint over plain HTTP (its fallback)."""
        rest = self.base_url.split("://", 1)[1]
        return dataclasses.replace(self, base_url=f"http://{rest}", http_fallback=False)

    @property
    def scheme(self) -> str:
        return self.base_url.split("://", 1)[0]

    @property
    def origin(self) -> str:
        """``scheme://host[:port]``: what redirects are compared against."""
        return f"{self.scheme}://{self.host}"

    def url(self, path: str) -> str:
        return self.base_url.rstrip("/") + "/" + path.lstrip("/")


def _fail(where: str, what: str) -> errdefs.InvalidArgument:
    return errdefs.InvalidArgument(f"registry host configuration {where}: {what}")


def _str_list(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise _fail(where, "must be a string or a list of strings")


def _resolve_path(p: str, base: Path | None) -> str:
    return str(base / p) if base is not None and not Path(p).is_absolute() else p


def _client_pairs(value: Any, where: str, base: Path | None) -> tuple[tuple[str, str], ...]:
    """containerd accepts ``"cert"``, ``["cert", "key"]`` or ``[["cert", "key"], ...]``."""
    pairs: list[tuple[str, str]] = []
    if isinstance(value, str):
        pairs.append((value, ""))
    elif value == []:
        pass
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        if len(value) not in (1, 2):
            raise _fail(where, "client must be [cert, key]")
        pairs.append((value[0], value[1] if len(value) == 2 else ""))
    elif isinstance(value, list):
        for item in value:
            pairs.extend(_client_pairs(item, where, None))
    else:
        raise _fail(where, "client must be a string, [cert, key] or a list of those")
    return tuple((_resolve_path(c, base), _resolve_path(k, base) if k else "") for c, k in pairs)


def _headers(value: Any, where: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, Mapping):
        raise _fail(where, "header must be a table")
    out: list[tuple[str, str]] = []
    for k, v in value.items():
        for item in _str_list(v, f"{where}.header.{k}"):
            out.append((str(k), item))
    return tuple(out)


_ENTRY_KEYS = {
    "capabilities",
    "ca",
    "client",
    "skip_verify",
    "header",
    "override_path",
    "plain_http",
}


def _entry(url: str, table: Mapping[str, Any], where: str, base: Path | None) -> HostEntry:
    unknown = set(table) - _ENTRY_KEYS
    if unknown:
        raise _fail(where, f"unknown keys {sorted(unknown)}")
    caps = frozenset(_str_list(table.get("capabilities", sorted(CAPABILITIES)), where))
    if not caps <= CAPABILITIES:
        raise _fail(where, f"unknown capabilities {sorted(caps - CAPABILITIES)}")
    for key in ("skip_verify", "override_path"):
        if not isinstance(table.get(key, False), bool):
            raise _fail(where, f"{key} must be a boolean")
    plain = table.get("plain_http")
    if plain is not None and not isinstance(plain, bool):
        raise _fail(where, "plain_http must be a boolean")
    tls = TLSConfig(
        ca=tuple(_resolve_path(p, base) for p in _str_list(table.get("ca", []), where)),
        client=_client_pairs(table.get("client", []), where, base),
        skip_verify=table.get("skip_verify", False),
    )
    return HostEntry(
        url=url,
        capabilities=caps,
        tls=tls,
        headers=_headers(table.get("header", {}), where),
        override_path=table.get("override_path", False),
        plain_http=plain,
    )


def parse_registry(table: Mapping[str, Any], where: str, base: Path | None = None) -> RegistryHosts:
    """One registry's table (hosts.toml shape) → `RegistryHosts`."""
    if not isinstance(table, Mapping):
        raise _fail(where, "must be a table")
    known = _ENTRY_KEYS | {"server", "host"}
    unknown = set(table) - known
    if unknown:
        raise _fail(where, f"unknown keys {sorted(unknown)}")
    server_keys = {k: v for k, v in table.items() if k in _ENTRY_KEYS and k != "plain_http"}
    server = None
    if "server" in table or server_keys:
        url = table.get("server", "")
        if not isinstance(url, str):
            raise _fail(where, "server must be a string")
        server = _entry(url, server_keys, where, base)
    hosts = table.get("host", {})
    if not isinstance(hosts, Mapping):
        raise _fail(where, "host must be a table of tables")
    mirrors = tuple(_entry(url, t, f"{where}.host.{url!r}", base) for url, t in hosts.items())
    plain = table.get("plain_http")
    if plain is not None and not isinstance(plain, bool):
        raise _fail(where, "plain_http must be a boolean")
    return RegistryHosts(server=server, mirrors=mirrors, plain_http=plain)


def _auth_key(key: str) -> str:
    """Accept ``host[:port]`` or a URL (docker config.json style) and return host[:port]."""
    if "://" in key:
        return urllib.parse.urlsplit(key).netloc
    return key.split("/", 1)[0]


def parse_credentials(table: Mapping[str, Any], where: str) -> Credentials:
    unknown = set(table) - {"username", "password", "identitytoken", "auth", "preemptive_basic"}
    if unknown:
        raise _fail(where, f"unknown keys {sorted(unknown)}")
    username = table.get("username", "")
    password = table.get("password", "")
    if "auth" in table:
        try:
            username, _, password = base64.b64decode(table["auth"]).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError, TypeError):
            # Never echo the value: it is a secret.
            raise _fail(where, "auth must be base64 of username:password") from None
    token = table.get("identitytoken", "")
    preemptive = table.get("preemptive_basic", False)
    if not all(isinstance(v, str) for v in (username, password, token)):
        raise _fail(where, "username, password and identitytoken must be strings")
    if not isinstance(preemptive, bool):
        raise _fail(where, "preemptive_basic must be a boolean")
    return Credentials(username, password, token, preemptive)


class HostsConfig:
    """Where to pull a registry's content from, with which TLS settings and credentials."""

    def __init__(
        self,
        registries: Mapping[str, RegistryHosts] | None = None,
        auths: Mapping[str, Credentials] | None = None,
        *,
        config_path: Path | str | None = None,
        plain_http: bool = False,
    ) -> None:
        self.registries = dict(registries or {})
        self.auths = {_auth_key(k): v for k, v in (auths or {}).items()}
        self.config_path = Path(config_path) if config_path else None
        self.plain_http = plain_http

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, plain_http: bool | None = None) -> HostsConfig:
        """From the daemon config's ``[registry]`` table; ``plain_http`` overrides its key."""
        unknown = set(data) - {"config_path", "plain_http", "hosts", "auths"}
        if unknown:
            raise _fail("[registry]", f"unknown keys {sorted(unknown)}")
        hosts = data.get("hosts", {})
        auths = data.get("auths", {})
        if not isinstance(hosts, Mapping) or not isinstance(auths, Mapping):
            raise _fail("[registry]", "hosts and auths must be tables")
        plain = data.get("plain_http", False) if plain_http is None else plain_http
        if not isinstance(plain, bool):
            raise _fail("[registry]", "plain_http must be a boolean")
        config_path = data.get("config_path") or None
        if config_path is not None and not isinstance(config_path, str):
            raise _fail("[registry]", "config_path must be a string")
        return cls(
            {h: parse_registry(t, f"registry.hosts.{h!r}") for h, t in hosts.items()},
            {h: parse_credentials(t, f"registry.auths.{h!r}") for h, t in auths.items()},
            config_path=config_path,
            plain_http=plain,
        )

    def for_request(self, host: str, plain_http: bool, username: str, secret: str) -> HostsConfig:
        """This configuration with one request's overrides: plain HTTP, and credentials for
        `host` (a pull's or push's `--plain-http` and `--user`)."""
        if not (plain_http or username or secret):
            return self
        auths = dict(self.auths)
        if username or secret:
            auths[host] = Credentials(username, secret)
        return HostsConfig(
            self.registries,
            auths,
            config_path=self.config_path,
            plain_http=plain_http or self.plain_http,
        )

    def key(self) -> tuple[object, ...]:
        """What tells configurations apart (hashable): equal keys mean the same endpoints,
        TLS settings and credentials (a registry client is shared by equal keys)."""
        return (
            tuple(sorted(self.registries.items())),
            tuple(sorted(self.auths.items())),
            str(self.config_path) if self.config_path is not None else None,
            self.plain_http,
        )

    # -- lookup -------------------------------------------------------------------------------

    def registry(self, host: str) -> RegistryHosts:
        """The configuration of registry ``host`` (empty when nothing is configured)."""
        if host in self.registries:
            return self.registries[host]
        if self.config_path is not None:
            for name in (host, "_default"):
                path = self.config_path / name / "hosts.toml"
                if path.is_file():
                    try:
                        table = tomllib.loads(path.read_text())
                    except (OSError, tomllib.TOMLDecodeError) as e:
                        raise _fail(str(path), f"cannot read: {e}") from None
                    return parse_registry(table, str(path), path.parent)
        return RegistryHosts()

    def credentials_for(self, endpoint_host: str) -> Credentials | None:
        """Credentials configured for exactly this endpoint host[:port], if any.

        docker.io credentials also serve registry-1.docker.io, which is the same service.
        """
        creds = self.auths.get(endpoint_host)
        if creds is None and endpoint_host == DOCKER_HUB_API_HOST:
            creds = self.auths.get(DEFAULT_HOST)
        return creds

    def _url(self, url: str, plain: bool) -> str:
        if "://" not in url:
            url = ("http://" if plain else "https://") + url
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise _fail(url, "scheme must be http or https")
        if parts.username is not None or parts.password is not None:
            # Credentials in URLs end up in logs; they belong in [registry.auths].
            raise _fail(parts.hostname or "url", "URLs must not contain credentials")
        if not parts.netloc:
            raise _fail(url, "no host")
        return url

    def _endpoint(
        self, entry: HostEntry, url: str, *, mirror: bool, fallback: bool = False
    ) -> Endpoint:
        parts = urllib.parse.urlsplit(url)
        path = parts.path.rstrip("/")
        if not entry.override_path and not path.endswith("/v2"):
            path += "/v2"
        base = f"{parts.scheme}://{parts.netloc}{path}"
        return Endpoint(
            base_url=base,
            host=parts.netloc,
            capabilities=entry.capabilities,
            tls=entry.tls,
            credentials=self.credentials_for(parts.netloc),
            headers=entry.headers,
            is_mirror=mirror,
            http_fallback=fallback and parts.scheme == "https" and is_loopback(parts.netloc),
        )

    def endpoints_for(self, host: str, capability: str | None = None) -> list[Endpoint]:
        """Mirrors in configured order, then the server; only those with ``capability``."""
        reg = self.registry(host)
        plain = self.plain_http or bool(reg.plain_http)
        # Nothing said which scheme: a loopback host may fall back to plain HTTP.
        unsaid = not self.plain_http and reg.plain_http is None
        endpoints = []
        for m in reg.mirrors:
            m_plain = plain if m.plain_http is None else m.plain_http
            fallback = unsaid and m.plain_http is None and "://" not in m.url
            endpoints.append(
                self._endpoint(m, self._url(m.url, m_plain), mirror=True, fallback=fallback)
            )
        server = reg.server or HostEntry(url="")
        default = DOCKER_HUB_API_HOST if host == DEFAULT_HOST else host
        fallback = unsaid and server.plain_http is None and "://" not in (server.url or default)
        endpoints.append(
            self._endpoint(
                server, self._url(server.url or default, plain), mirror=False, fallback=fallback
            )
        )
        if capability is not None:
            endpoints = [e for e in endpoints if capability in e.capabilities]
        return endpoints


def is_loopback(netloc: str) -> bool:
    """Whether ``host[:port]`` names this machine: localhost, 127.0.0.0/8 or ::1."""
    host = netloc
    if host.startswith("["):
        host = host[1:].partition("]")[0]
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
