"""containers-policy.json(5): parsed strictly, looked up by docker scope.

Parsing follows containers/image: unknown, duplicated or invalid fields refuse the whole file;
unknown requirement types and unknown transports are refused. Key files are read here, once
per load, so a missing key is a bad policy (one line), not a failure at pull time. Only the
``docker`` transport is evaluated (liner pulls nothing else); other transports' sections are
checked and kept aside.
"""

from __future__ import annotations

import base64
import binascii
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from linerd.policy import boundedjson
from linerd.policy.errors import PolicyError
from linerd.policy.identity import IdentityError, MatchRepoDigestOrExact, parse_identity
from linerd.policy.refs import DockerRef, scope_candidates
from linerd.policy.requirements import (
    InsecureAcceptAnything,
    Reject,
    Requirement,
    SignedBy,
    SigstoreSigned,
)

MAX_POLICY_BYTES = 4 << 20
MAX_KEY_BYTES = 4 << 20
# containers/image's transport names (transports/alltransports); a policy naming another
# transport is refused there, so here too.
KNOWN_TRANSPORTS = frozenset(
    {
        "atomic",
        "containers-storage",
        "dir",
        "docker",
        "docker-archive",
        "docker-daemon",
        "oci",
        "oci-archive",
        "ostree",
        "sif",
        "tarball",
    }
)
# Known to containers/image but not implemented by liner: refused by name, not as unknown.
_UNSUPPORTED_SIGSTORE_FIELDS = (
    "keyPaths",
    "keyDatas",
    "fulcio",
    "rekorPublicKeyPath",
    "rekorPublicKeyPaths",
    "rekorPublicKeyData",
    "rekorPublicKeyDatas",
    "pki",
)


class _Bad(Exception):
    """A problem inside the file; becomes PolicyError with the path."""


@dataclass(frozen=True)
class Policy:
    default: tuple[Requirement, ...]
    docker_default: tuple[Requirement, ...] | None = None
    docker_scopes: dict[str, tuple[Requirement, ...]] = field(default_factory=dict)
    other_transports: dict[str, dict[str, tuple[Requirement, ...]]] = field(default_factory=dict)
    source: str = "<policy>"

    def requirements_for(self, ref: DockerRef) -> tuple[str, tuple[Requirement, ...]]:
        """The scope that applies (in words) and its requirements: the most specific wins."""
        for scope in scope_candidates(ref):
            reqs = self.docker_scopes.get(scope)
            if reqs is not None:
                return f'docker scope "{scope}"', reqs
        if self.docker_default is not None:
            return 'docker transport default ""', self.docker_default
        return "default", self.default


def _read_key_file(path: object, what: str) -> bytes:
    if not isinstance(path, str) or not path:
        raise _Bad(f"{what} must be a non-empty string")
    if not os.path.isabs(path):
        raise _Bad(f"{what} {path!r} must be an absolute path")
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_KEY_BYTES + 1)
    except OSError as e:
        raise _Bad(f"{what} {path}: {e.strerror or e}") from None
    if len(data) > MAX_KEY_BYTES:
        raise _Bad(f"{what} {path} is larger than {MAX_KEY_BYTES} bytes")
    return data


def _key_data(value: object, what: str) -> bytes:
    if not isinstance(value, str) or not value:
        raise _Bad(f"{what} must be a non-empty base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise _Bad(f"{what} is not valid base64") from None


def _fields(obj: dict[str, Any], kind: str, allowed: set[str]) -> None:
    extra = sorted(set(obj) - allowed)
    if extra:
        raise _Bad(f"requirement {kind} has unknown field {extra[0]!r}")


def _identity(obj: dict[str, Any]) -> Any:
    if "signedIdentity" not in obj:
        return MatchRepoDigestOrExact()
    try:
        return parse_identity(obj["signedIdentity"])
    except IdentityError as e:
        raise _Bad(str(e)) from None


def _signed_by(obj: dict[str, Any]) -> SignedBy:
    _fields(
        obj, "signedBy", {"type", "keyType", "keyPath", "keyPaths", "keyData", "signedIdentity"}
    )
    key_type = obj.get("keyType")
    if key_type is None:
        raise _Bad('requirement signedBy is missing "keyType"')
    if key_type != "GPGKeys":
        if key_type in ("signedByGPGKeys", "X509Certificates", "signedByX509CAs"):
            raise _Bad(f"signedBy keyType {key_type!r} is not supported (only GPGKeys)")
        raise _Bad(f"signedBy has unknown keyType {key_type!r}")
    sources = [k for k in ("keyPath", "keyPaths", "keyData") if k in obj]
    if len(sources) != 1:
        raise _Bad('signedBy needs exactly one of "keyPath", "keyPaths" and "keyData"')
    source = sources[0]
    if source == "keyPath":
        keyring: tuple[bytes, ...] = (_read_key_file(obj["keyPath"], "keyPath"),)
        label = str(obj["keyPath"])
    elif source == "keyPaths":
        paths = obj["keyPaths"]
        if not isinstance(paths, list) or not paths:
            raise _Bad("keyPaths must be a non-empty array of paths")
        keyring = tuple(_read_key_file(p, "keyPaths entry") for p in paths)
        label = ", ".join(str(p) for p in paths)
    else:
        keyring = (_key_data(obj["keyData"], "keyData"),)
        label = "from keyData"
    return SignedBy(keyring, label, _identity(obj))


def load_public_key(pem: bytes, what: str) -> ec.EllipticCurvePublicKey:
    """A PEM public key as cosign writes it (ECDSA)."""
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError) as e:
        raise _Bad(f"{what} is not a PEM public key ({e})") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise _Bad(f"{what} is not an ECDSA public key (only ECDSA is supported)")
    return key


def _sigstore_signed(obj: dict[str, Any]) -> SigstoreSigned:
    for name in _UNSUPPORTED_SIGSTORE_FIELDS:
        if name in obj:
            raise _Bad(f"sigstoreSigned field {name!r} is not supported (only keyPath or keyData)")
    _fields(obj, "sigstoreSigned", {"type", "keyPath", "keyData", "signedIdentity"})
    sources = [k for k in ("keyPath", "keyData") if k in obj]
    if len(sources) != 1:
        raise _Bad('sigstoreSigned needs exactly one of "keyPath" and "keyData"')
    if sources[0] == "keyPath":
        pem = _read_key_file(obj["keyPath"], "keyPath")
        label = str(obj["keyPath"])
    else:
        pem = _key_data(obj["keyData"], "keyData")
        label = "from keyData"
    return SigstoreSigned(load_public_key(pem, f"key {label}"), label, _identity(obj))


def _requirement(obj: object) -> Requirement:
    if not isinstance(obj, dict):
        raise _Bad("a policy requirement is not a JSON object")
    kind = obj.get("type")
    match kind:
        case "insecureAcceptAnything":
            _fields(obj, kind, {"type"})
            return InsecureAcceptAnything()
        case "reject":
            _fields(obj, kind, {"type"})
            return Reject()
        case "signedBy":
            return _signed_by(obj)
        case "sigstoreSigned":
            return _sigstore_signed(obj)
        case "signedBaseLayer":
            raise _Bad("requirement type 'signedBaseLayer' is not supported")
        case None:
            raise _Bad('a policy requirement has no "type"')
        case _:
            raise _Bad(f"unknown policy requirement type {kind!r}")


def _requirements(value: object, where: str) -> tuple[Requirement, ...]:
    if not isinstance(value, list):
        raise _Bad(f"{where}: requirements must be a JSON array")
    if not value:
        raise _Bad(f"{where}: the list of policy requirements must not be empty")
    try:
        return tuple(_requirement(item) for item in value)
    except _Bad as e:
        raise _Bad(f"{where}: {e}") from None


def parse_policy(data: bytes, source: str = "<policy>") -> Policy:
    """Parse policy.json bytes; raise PolicyError naming ``source`` and the problem."""
    try:
        doc = boundedjson.loads(data, max_bytes=MAX_POLICY_BYTES)
        if not isinstance(doc, dict):
            raise _Bad("the policy is not a JSON object")
        extra = sorted(set(doc) - {"default", "transports"})
        if extra:
            raise _Bad(f"unknown top-level field {extra[0]!r}")
        if "default" not in doc:
            raise _Bad('the "default" policy is missing')
        default = _requirements(doc["default"], "default")
        transports = doc.get("transports", {})
        if transports is None:
            transports = {}
        if not isinstance(transports, dict):
            raise _Bad('"transports" must be a JSON object')
        docker_default = None
        docker_scopes: dict[str, tuple[Requirement, ...]] = {}
        others: dict[str, dict[str, tuple[Requirement, ...]]] = {}
        for transport, scopes in transports.items():
            if transport not in KNOWN_TRANSPORTS:
                raise _Bad(f"unknown transport {transport!r}")
            if not isinstance(scopes, dict):
                raise _Bad(f"transport {transport!r} must map scopes to requirements")
            parsed = {
                scope: _requirements(reqs, f"{transport} scope {scope!r}")
                for scope, reqs in scopes.items()
            }
            if transport == "docker":
                docker_default = parsed.pop("", None)
                docker_scopes = parsed
            else:
                others[transport] = parsed
    except boundedjson.JSONRefused as e:
        raise PolicyError(source, str(e)) from None
    except _Bad as e:
        raise PolicyError(source, str(e)) from None
    return Policy(default, docker_default, docker_scopes, others, source)


def load_policy(path: str | Path) -> Policy:
    """Read and parse a policy.json file (blocking: call from a thread)."""
    path = str(path)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_POLICY_BYTES + 1)
    except OSError as e:
        raise PolicyError(path, f"cannot read: {e.strerror or e}") from None
    return parse_policy(data, path)
