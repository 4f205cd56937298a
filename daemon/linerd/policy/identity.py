"""`signedIdentity`: which identity a signature may claim for the image being checked.

Semantics of containers/image's signature/policy_reference_match.go (facts, rewritten):
``intended`` is the image as pulled (tag or digest), ``signed`` the signature's
critical.identity.docker-reference parsed with short forms expanded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from linerd.policy.refs import DockerRef, parse_canonical, parse_normalized

# distribution's domain grammar with an optional port (reference/regexp.go).
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_RE = re.compile(
    rf"^(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?$"
)


_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*"
_PATH_RE = re.compile(rf"^{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*$")


class IdentityError(ValueError):
    """A signedIdentity object that is not valid; the message says why."""


def _repo_digest_or_exact(intended: DockerRef, signed: DockerRef) -> bool:
    if signed.name_only:
        return False
    if intended.tag is not None:
        return str(signed) == str(intended)
    if intended.digest is not None:
        # The signature's digest is checked against the pulled manifest separately.
        return signed.name == intended.name
    return False


@dataclass(frozen=True, slots=True)
class MatchRepoDigestOrExact:
    kind = "matchRepoDigestOrExact"

    def matches(self, intended: DockerRef, signed_text: str) -> bool:
        signed = parse_normalized(signed_text)
        return signed is not None and _repo_digest_or_exact(intended, signed)


@dataclass(frozen=True, slots=True)
class MatchExact:
    kind = "matchExact"

    def matches(self, intended: DockerRef, signed_text: str) -> bool:
        signed = parse_normalized(signed_text)
        if signed is None or signed.name_only or intended.name_only:
            return False
        return str(signed) == str(intended)


@dataclass(frozen=True, slots=True)
class MatchRepository:
    kind = "matchRepository"

    def matches(self, intended: DockerRef, signed_text: str) -> bool:
        signed = parse_normalized(signed_text)
        return signed is not None and signed.name == intended.name


@dataclass(frozen=True, slots=True)
class ExactReference:
    docker_reference: str
    kind = "exactReference"

    def matches(self, intended: DockerRef, signed_text: str) -> bool:
        wanted = parse_normalized(self.docker_reference)
        signed = parse_normalized(signed_text)
        if wanted is None or signed is None or wanted.name_only or signed.name_only:
            return False
        return str(signed) == str(wanted)


@dataclass(frozen=True, slots=True)
class ExactRepository:
    docker_repository: str
    kind = "exactRepository"

    def matches(self, intended: DockerRef, signed_text: str) -> bool:
        wanted = parse_normalized(self.docker_repository)
        signed = parse_normalized(signed_text)
        return wanted is not None and signed is not None and signed.name == wanted.name


@dataclass(frozen=True, slots=True)
class RemapIdentity:
    prefix: str
    signed_prefix: str
    kind = "remapIdentity"

    def _prefix_matches(self, ref: DockerRef) -> bool:
        # Only the name is compared, so the one separator after the prefix is "/"; a host:port
        # prefix must match the whole domain.
        name = ref.name
        if len(name) == len(self.prefix):
            return name == self.prefix
        return name.startswith(self.prefix) and name[len(self.prefix) : len(self.prefix) + 1] == "/"

    def remap(self, intended: DockerRef) -> DockerRef | None:
        if not self._prefix_matches(intended):
            return intended
        text = str(intended).replace(self.prefix, self.signed_prefix, 1)
        return parse_canonical(text)

    def matches(self, intended: DockerRef, signed_text: str) -> bool:
        signed = parse_normalized(signed_text)
        remapped = self.remap(intended)
        return (
            signed is not None and remapped is not None and _repo_digest_or_exact(remapped, signed)
        )


SignedIdentity = (
    MatchRepoDigestOrExact
    | MatchExact
    | MatchRepository
    | ExactReference
    | ExactRepository
    | RemapIdentity
)


def describe(identity: SignedIdentity) -> str:
    match identity:
        case ExactReference(docker_reference=r):
            return f"exactReference {r}"
        case ExactRepository(docker_repository=r):
            return f"exactRepository {r}"
        case RemapIdentity(prefix=p, signed_prefix=s):
            return f"remapIdentity {p} -> {s}"
        case _:
            return identity.kind


def _valid_remap_prefix(value: str) -> bool:
    # A host[:port], or host[:port]/path without tag or digest (as containers/image checks it:
    # short names pass here and simply never match).
    if _DOMAIN_RE.match(value):
        return True
    host, slash, path = value.partition("/")
    return bool(slash) and bool(_DOMAIN_RE.match(host)) and bool(_PATH_RE.match(path))


def _string_field(obj: dict[str, object], key: str, kind: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise IdentityError(f'signedIdentity {kind} needs a string "{key}"')
    return value


def parse_identity(obj: object) -> SignedIdentity:
    """A signedIdentity JSON object; unknown types and fields are refused."""
    if not isinstance(obj, dict):
        raise IdentityError("signedIdentity is not a JSON object")
    kind = obj.get("type")
    allowed: dict[object, set[str]] = {
        "matchExact": {"type"},
        "matchRepoDigestOrExact": {"type"},
        "matchRepository": {"type"},
        "exactReference": {"type", "dockerReference"},
        "exactRepository": {"type", "dockerRepository"},
        "remapIdentity": {"type", "prefix", "signedPrefix"},
    }
    if kind not in allowed:
        raise IdentityError(f"unknown signedIdentity type {kind!r}")
    extra = sorted(set(obj) - allowed[kind])
    if extra:
        raise IdentityError(f"signedIdentity {kind} has unknown field {extra[0]!r}")
    match kind:
        case "matchExact":
            return MatchExact()
        case "matchRepoDigestOrExact":
            return MatchRepoDigestOrExact()
        case "matchRepository":
            return MatchRepository()
        case "exactReference":
            value = _string_field(obj, "dockerReference", kind)
            ref = parse_normalized(value)
            if ref is None:
                raise IdentityError(f"exactReference dockerReference {value!r} is not a reference")
            if ref.name_only:
                raise IdentityError(
                    f"exactReference dockerReference {value!r} has neither a tag nor a digest"
                )
            return ExactReference(value)
        case "exactRepository":
            value = _string_field(obj, "dockerRepository", kind)
            if parse_normalized(value) is None:
                raise IdentityError(f"exactRepository dockerRepository {value!r} is not valid")
            return ExactRepository(value)
        case _:
            prefix = _string_field(obj, "prefix", kind)
            signed_prefix = _string_field(obj, "signedPrefix", kind)
            for label, value in (("prefix", prefix), ("signedPrefix", signed_prefix)):
                if not _valid_remap_prefix(value):
                    raise IdentityError(
                        f"remapIdentity {label} {value!r} is not a host[:port], namespace or "
                        "repository in the fully expanded form"
                    )
            return RemapIdentity(prefix, signed_prefix)
