"""Image references, parsed and normalized as docker/containerd do.

``busybox`` → ``docker.io/library/busybox:latest``; ``host:5000/a/b:tag``; ``name@sha256:…``;
``name:tag@sha256:…`` (both kept; the digest wins when fetching); ``localhost/x``;
``[::1]:5000/x``. The grammar is distribution's reference grammar (reference/regexp.go).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from linerd import errdefs

DEFAULT_HOST = "docker.io"
# The Docker Hub API lives on another name than the one in references: a protocol fact.
DOCKER_HUB_API_HOST = "registry-1.docker.io"
_DOCKER_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
MAX_NAME_LENGTH = 255

_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_IPV6 = r"\[[a-fA-F0-9:]+\]"
_HOST_RE = re.compile(rf"^(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|{_IPV6})(?::[0-9]+)?$")
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*"
_PATH_RE = re.compile(rf"^{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*$")
# ASCII: distribution's \w is RE2's [0-9A-Za-z_], not Unicode word characters.
_TAG_RE = re.compile(r"^[\w][\w.-]{0,127}$", re.ASCII)
_DIGEST_RE = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$")
_ANCHORED_HEX64 = re.compile(r"^[a-f0-9]{64}$")
_DIGEST_HEX_LENGTHS = {"sha256": 64, "sha384": 96, "sha512": 128}


def validate_digest(digest: str) -> str:
    """Check ``algorithm:hex`` for the algorithms linerd knows; return it unchanged."""
    if not _DIGEST_RE.match(digest):
        raise errdefs.InvalidArgument(f"invalid digest {digest!r}")
    algorithm, _, hexpart = digest.partition(":")
    length = _DIGEST_HEX_LENGTHS.get(algorithm)
    if length is None:
        raise errdefs.InvalidArgument(f"unsupported digest algorithm {algorithm!r}")
    if len(hexpart) != length or not re.fullmatch(r"[a-f0-9]+", hexpart):
        raise errdefs.InvalidArgument(
            f"invalid {algorithm} digest {digest!r}: want {length} lowercase hex digits"
        )
    return digest


@dataclass(frozen=True, slots=True)
class Reference:
    """A normalized reference. ``tag`` is "latest" when neither tag nor digest was given."""

    host: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        """``host/repository``: the image name without tag or digest."""
        return f"{self.host}/{self.repository}"

    @property
    def object(self) -> str:
        """What goes after ``/manifests/``: the digest if there is one, else the tag."""
        return self.digest or self.tag or "latest"

    @property
    def api_host(self) -> str:
        """The host to talk to by default (docker.io's API is on registry-1.docker.io)."""
        return DOCKER_HUB_API_HOST if self.host == DEFAULT_HOST else self.host

    def with_digest(self, digest: str) -> Reference:
        return Reference(self.host, self.repository, self.tag, validate_digest(digest))

    def __str__(self) -> str:
        s = self.name
        if self.tag:
            s += f":{self.tag}"
        if self.digest:
            s += f"@{self.digest}"
        return s


def _split_host(name: str) -> tuple[str, str]:
    """Split off the registry host as docker does: the first component is a host if it has a
    dot or a colon, is "localhost", or has upper case letters (repositories cannot)."""
    first, sep, rest = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost" or first.lower() != first):
        host = first
        if host.lower() in _DOCKER_HUB_ALIASES:
            host = DEFAULT_HOST
        return host, rest
    return DEFAULT_HOST, name


def parse(ref: str) -> Reference:
    """Parse and normalize ``ref``; raise errdefs.InvalidArgument saying what is wrong."""
    if not isinstance(ref, str) or not ref:
        raise errdefs.InvalidArgument("invalid reference: empty")
    if ref != ref.strip() or any(c.isspace() for c in ref):
        raise errdefs.InvalidArgument(f"invalid reference {ref!r}: contains white space")
    if "://" in ref:
        raise errdefs.InvalidArgument(f"invalid reference {ref!r}: must not contain a scheme")

    remainder, at, digest = ref.partition("@")
    if at:
        validate_digest(digest)
    else:
        digest = ""

    host, path = _split_host(remainder)
    # A tag is the part after the last colon that is after the last slash (the host may have
    # a port, which also has a colon).
    tag = ""
    slash = path.rfind("/")
    colon = path.rfind(":")
    if colon > slash:
        path, tag = path[:colon], path[colon + 1 :]
        if not _TAG_RE.match(tag):
            raise errdefs.InvalidArgument(f"invalid reference {ref!r}: invalid tag {tag!r}")

    if not _HOST_RE.match(host):
        raise errdefs.InvalidArgument(f"invalid reference {ref!r}: invalid registry host {host!r}")
    if not path:
        raise errdefs.InvalidArgument(f"invalid reference {ref!r}: no repository name")
    if path.lower() != path:
        raise errdefs.InvalidArgument(
            f"invalid reference {ref!r}: repository name must be lowercase"
        )
    if not _PATH_RE.match(path):
        raise errdefs.InvalidArgument(f"invalid reference {ref!r}: invalid repository {path!r}")
    if host == DEFAULT_HOST and "/" not in path:
        if _ANCHORED_HEX64.match(path):
            # docker refuses these: they would be confused with image IDs.
            raise errdefs.InvalidArgument(
                f"invalid reference {ref!r}: cannot be a 64-character hexadecimal string"
            )
        path = f"library/{path}"
    if len(host) + 1 + len(path) > MAX_NAME_LENGTH:
        raise errdefs.InvalidArgument(
            f"invalid reference: name longer than {MAX_NAME_LENGTH} characters"
        )
    if not tag and not digest:
        tag = "latest"
    return Reference(host, path, tag or None, digest or None)


def normalize(ref: str) -> str:
    """The canonical string of ``ref`` (``busybox`` → ``docker.io/library/busybox:latest``)."""
    return str(parse(ref))
