"""Docker references as containers/image's policy code sees them.

A `DockerRef` keeps whether a tag or digest was written (containers/image's "name only"
references stay name only: ``busybox`` is ``docker.io/library/busybox``, no implied
``:latest``). Scope lookup follows docker/policyconfiguration: the exact reference
(``name:tag`` or ``name@digest``), then the repository, each parent namespace, the registry
host, then wildcarded parent domains of the host without its port (``*.example.com``,
``*.com``).
"""

from __future__ import annotations

from dataclasses import dataclass

from linerd import errdefs
from linerd.remotes import reference as remote_reference
from linerd.remotes.reference import Reference


@dataclass(frozen=True, slots=True)
class DockerRef:
    host: str
    path: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        return f"{self.host}/{self.path}"

    @property
    def name_only(self) -> bool:
        return self.tag is None and self.digest is None

    def __str__(self) -> str:
        s = self.name
        if self.tag is not None:
            s += f":{self.tag}"
        if self.digest is not None:
            s += f"@{self.digest}"
        return s


def _written_tag_or_digest(text: str) -> tuple[bool, bool]:
    name, at, _ = text.partition("@")
    return name.rfind(":") > name.rfind("/"), bool(at)


def parse_normalized(text: str) -> DockerRef | None:
    """Like ParseNormalizedNamed: short forms expanded, no tag added; None when invalid."""
    try:
        parsed = remote_reference.parse(text)
    except errdefs.InvalidArgument:
        return None
    has_tag, has_digest = _written_tag_or_digest(text)
    return DockerRef(
        parsed.host,
        parsed.repository,
        parsed.tag if has_tag else None,
        parsed.digest if has_digest else None,
    )


def parse_canonical(text: str) -> DockerRef | None:
    """Like ParseNamed: only the fully expanded form is valid (``docker.io/library/x``)."""
    ref = parse_normalized(text)
    if ref is None or str(ref) != text:
        return None
    return ref


def from_pulled(ref: Reference | str) -> DockerRef:
    """The identity of an image as pulled: tag or digest, never both.

    containers/image refuses a docker reference with both; liner pulls such a reference by its
    digest, so the digest is what the image's identity is (the tag is not what was verified).
    """
    if isinstance(ref, str):
        ref = remote_reference.parse(ref)
    if ref.digest:
        return DockerRef(ref.host, ref.repository, None, ref.digest)
    return DockerRef(ref.host, ref.repository, ref.tag or "latest", None)


def policy_identity(ref: DockerRef) -> str:
    """The most specific scope: ``name:tag`` or ``name@digest``."""
    return str(ref)


def policy_namespaces(ref: DockerRef) -> list[str]:
    """The less specific scopes, most specific first (repository ... host, then wildcards)."""
    out: list[str] = []
    name = ref.name
    while True:
        out.append(name)
        slash = name.rfind("/")
        if slash < 0:
            break
        name = name[:slash]
    host = name.split(":", 1)[0] if not name.startswith("[") else name
    while "." in host:
        host = host[host.index(".") + 1 :]
        out.append(f"*.{host}")
    return out


def scope_candidates(ref: DockerRef) -> list[str]:
    return [policy_identity(ref), *policy_namespaces(ref)]
