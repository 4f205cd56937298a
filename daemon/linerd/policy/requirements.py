"""Policy requirements as parsed: plain values, no I/O at evaluation time for keys."""

from __future__ import annotations

from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric import ec

from linerd.policy.identity import MatchRepoDigestOrExact, SignedIdentity, describe


@dataclass(frozen=True, slots=True)
class InsecureAcceptAnything:
    def describe(self) -> str:
        return "insecureAcceptAnything"


@dataclass(frozen=True, slots=True)
class Reject:
    def describe(self) -> str:
        return "reject"


@dataclass(frozen=True, slots=True)
class SignedBy:
    """GPG simple signing; ``keyring`` is the key material (binary or armored keyrings)."""

    keyring: tuple[bytes, ...]
    key_source: str
    identity: SignedIdentity = field(default_factory=MatchRepoDigestOrExact)
    key_type: str = "GPGKeys"

    def describe(self) -> str:
        return f"signedBy (GPG keys {self.key_source}, signedIdentity {describe(self.identity)})"


@dataclass(frozen=True, slots=True)
class SigstoreSigned:
    public_key: ec.EllipticCurvePublicKey = field(compare=False)
    key_source: str
    identity: SignedIdentity = field(default_factory=MatchRepoDigestOrExact)

    def describe(self) -> str:
        return (
            f"sigstoreSigned (public key {self.key_source}, "
            f"signedIdentity {describe(self.identity)})"
        )


Requirement = InsecureAcceptAnything | Reject | SignedBy | SigstoreSigned
