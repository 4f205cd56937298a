"""The verdict on one image: the policy's requirements for its scope, all of which must hold.

`Evaluator.evaluate` is what the pull path calls with the reference as pulled and the manifest
digest actually fetched. Signatures are read at most once per evaluation and only when a
requirement needs them: lookaside signatures (registries.d) and, where registries.d enables
``use-sigstore-attachments``, the cosign attachment through the caller's `SignatureArtifacts`.
For each signing requirement, one accepted signature is enough (containers/image's rule);
the verdict names the requirement that decided it. Definite verdicts are cached per
(manifest digest, reference, policy generation); a failure to read signatures is not cached.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

from linerd.policy import gpg, lookaside, payload, sigstore
from linerd.policy.policyfile import Policy
from linerd.policy.refs import DockerRef, from_pulled
from linerd.policy.registriesd import RegistriesD
from linerd.policy.requirements import (
    InsecureAcceptAnything,
    Reject,
    Requirement,
    SignedBy,
    SigstoreSigned,
)
from linerd.remotes.reference import Reference

if TYPE_CHECKING:
    from linerd.remotes.httpclient import HTTPClient

SIMPLE_SIGNING_PREFIX = b"\x00simple-signing\n"
SIGSTORE_JSON_PREFIX = b"\x00sigstore-json\n"
# First bytes of an OpenPGP message as containers/image recognizes a legacy signature.
_OPENPGP_FIRST = frozenset(
    {0xA0, 0xA1, 0xA2, 0xA3, 0xC8, 0x90, 0x91, 0x92, 0x3D, 0xC4, 0x88, 0x89, 0x8A, 0x8B, 0xC2}
)


@dataclass(frozen=True, slots=True)
class Verdict:
    accepted: bool
    requirement: str  # the requirement that decided, in words
    reason: str
    scope: str
    cacheable: bool = True

    @property
    def message(self) -> str:
        word = "accepted" if self.accepted else "rejected"
        return f"{word} by {self.requirement} ({self.scope}): {self.reason}"


class _Unavailable(Exception):
    """Signatures could not be read: the verdict is a rejection, but not a cacheable one."""


@dataclass
class _Signatures:
    simple: list[bytes]
    sigstore: list[sigstore.Attachment]
    unreadable: list[str]  # lookaside blobs in no format we know


class Evaluator:
    """One loaded policy + registries.d; ``generation`` changes on every reload."""

    def __init__(
        self,
        policy: Policy,
        registries: RegistriesD,
        generation: int = 0,
        *,
        http_client: HTTPClient | None = None,
        cache_size: int = 4096,
    ) -> None:
        self.policy = policy
        self.registries = registries
        self.generation = generation
        self._http = http_client
        self._cache: OrderedDict[tuple[str, str, int], Verdict] = OrderedDict()
        self._cache_size = cache_size

    async def evaluate(
        self,
        reference: Reference | str,
        manifest_digest: str,
        *,
        artifacts: sigstore.SignatureArtifacts | None = None,
        manifest: bytes | None = None,
    ) -> Verdict:
        """The verdict for the image ``reference`` whose manifest is ``manifest_digest``."""
        ref = from_pulled(reference)
        key = (manifest_digest, str(ref), self.generation)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        verdict = await self._evaluate(ref, manifest_digest, artifacts, manifest)
        if verdict.cacheable:
            self._cache[key] = verdict
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return verdict

    async def _evaluate(
        self,
        ref: DockerRef,
        digest: str,
        artifacts: sigstore.SignatureArtifacts | None,
        manifest: bytes | None,
    ) -> Verdict:
        scope, requirements = self.policy.requirements_for(ref)
        signatures: _Signatures | None = None
        for requirement in requirements:
            if isinstance(requirement, Reject):
                return Verdict(
                    False, requirement.describe(), "the policy rejects this image", scope
                )
            if isinstance(requirement, InsecureAcceptAnything):
                continue
            if signatures is None:
                try:
                    signatures = await self._signatures(ref, digest, artifacts)
                except _Unavailable as e:
                    return Verdict(False, requirement.describe(), str(e), scope, cacheable=False)
            reason = await self._check(requirement, ref, digest, manifest, signatures)
            if reason is not None:
                return Verdict(False, requirement.describe(), reason, scope)
        deciding = [r.describe() for r in requirements]
        return Verdict(True, " and ".join(deciding), "every requirement is satisfied", scope)

    async def _signatures(
        self, ref: DockerRef, digest: str, artifacts: sigstore.SignatureArtifacts | None
    ) -> _Signatures:
        found = _Signatures([], [], [])
        base = self.registries.lookaside_base(ref)
        if base is not None:
            try:
                blobs = await lookaside.fetch_signatures(base, ref, digest, client=self._http)
            except (lookaside.LookasideError, ValueError) as e:
                raise _Unavailable(f"cannot read signatures: {e}") from None
            for blob in blobs:
                _classify(blob, found)
        if self.registries.use_sigstore_attachments(ref):
            if artifacts is None:
                raise _Unavailable("sigstore attachments are enabled but cannot be fetched here")
            repository = DockerRef(ref.host, ref.path)
            try:
                found.sigstore += await sigstore.fetch_attachments(artifacts, repository, digest)
            except sigstore.AttachmentError as e:
                # A hostile or broken attachment is a definite reason, not an outage.
                found.unreadable.append(f"signature attachment refused: {e}")
            except Exception as e:  # the caller's fetcher: network, auth, sizes
                raise _Unavailable(f"cannot read signature attachment: {e}") from None
        return found

    async def _check(
        self,
        requirement: Requirement,
        ref: DockerRef,
        digest: str,
        manifest: bytes | None,
        signatures: _Signatures,
    ) -> str | None:
        """None when ``requirement`` accepts the image, else the reason in words."""
        if signatures.unreadable:
            # containers/image fails the image when any signature cannot be parsed, even if
            # another one would verify: so does liner (skopeo's verdict is the reference).
            return "; ".join(signatures.unreadable)
        reasons: list[str] = []
        if isinstance(requirement, SignedBy):
            for blob in signatures.simple:
                reason = await asyncio.to_thread(
                    _simple_signing, requirement, blob, ref, digest, manifest
                )
                if reason is None:
                    return None
                reasons.append(reason)
        elif isinstance(requirement, SigstoreSigned):
            for attachment in signatures.sigstore:
                if attachment.media_type != sigstore.SIGNATURE_MEDIA_TYPE:
                    continue
                reason = await asyncio.to_thread(
                    _sigstore, requirement, attachment, ref, digest, manifest
                )
                if reason is None:
                    return None
                reasons.append(reason)
        if not reasons:
            return "a signature was required, but no signature exists"
        if len(reasons) == 1:
            return reasons[0]
        return "none of the signatures were accepted: " + "; ".join(reasons)


def _classify(blob: bytes, into: _Signatures) -> None:
    if blob.startswith(SIMPLE_SIGNING_PREFIX):
        into.simple.append(blob[len(SIMPLE_SIGNING_PREFIX) :])
    elif blob.startswith(SIGSTORE_JSON_PREFIX):
        try:
            into.sigstore.append(sigstore.from_lookaside_json(blob[len(SIGSTORE_JSON_PREFIX) :]))
        except sigstore.AttachmentError as e:
            into.unreadable.append(f"invalid sigstore signature in the lookaside: {e}")
    elif blob and blob[0] in _OPENPGP_FIRST:
        into.simple.append(blob)
    else:
        first = f"{blob[0]:#x}" if blob else "nothing"
        into.unreadable.append(f"unrecognized signature format starting with {first}")


def _claims_reason(
    claims: payload.Claims,
    requirement: SignedBy | SigstoreSigned,
    ref: DockerRef,
    digest: str,
    manifest: bytes | None,
) -> str | None:
    if not payload.digest_matches(claims.manifest_digest, digest, manifest):
        return f"signature for digest {claims.manifest_digest} does not match"
    if not requirement.identity.matches(ref, claims.docker_reference):
        return f"signature for identity {claims.docker_reference!r} is not accepted"
    return None


def _simple_signing(
    requirement: SignedBy, blob: bytes, ref: DockerRef, digest: str, manifest: bytes | None
) -> str | None:
    try:
        verified = gpg.verify(requirement.keyring, blob)
        claims = payload.parse_claims(verified.plaintext, payload.SIMPLE_SIGNING_TYPE)
    except (gpg.GPGError, payload.PayloadError) as e:
        return str(e)
    return _claims_reason(claims, requirement, ref, digest, manifest)


def _sigstore(
    requirement: SigstoreSigned,
    attachment: sigstore.Attachment,
    ref: DockerRef,
    digest: str,
    manifest: bytes | None,
) -> str | None:

    try:
        sigstore.verify_signature(requirement.public_key, attachment)
        claims = payload.parse_claims(attachment.payload, payload.COSIGN_TYPE)
    except (sigstore.AttachmentError, payload.PayloadError) as e:
        return str(e)
    return _claims_reason(claims, requirement, ref, digest, manifest)
