"""cosign signatures: the ``sha256-<hex>.sig`` attachment and its verification.

The attachment is an OCI image manifest tagged ``<alg>-<hex>.sig`` in the image's repository;
each layer of media type application/vnd.dev.cosign.simplesigning.v1+json is a payload whose
base64 ECDSA signature is the layer annotation dev.cosignproject.cosign/signature. Fetching is
the caller's (`SignatureArtifacts`), so this module needs no registry client. Every size is
bounded and a tag that resolves to an index is refused.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
from dataclasses import dataclass, field
from typing import Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from linerd.policy import boundedjson
from linerd.policy.refs import DockerRef

SIGNATURE_MEDIA_TYPE = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
INDEX_TYPES = frozenset(
    {
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    }
)
MAX_MANIFEST_BYTES = 4 << 20
MAX_PAYLOAD_BYTES = 4 << 20
MAX_LAYERS = 128
# cosign's hash per curve (sigstore's signature/ecdsa defaults).
_CURVE_HASH: dict[str, type[hashes.HashAlgorithm]] = {
    "secp256r1": hashes.SHA256,
    "secp384r1": hashes.SHA384,
    "secp521r1": hashes.SHA512,
}


class AttachmentError(Exception):
    """The signature attachment is unusable; the message says why."""


class SignatureArtifacts(Protocol):
    """What the caller provides to fetch cosign attachments (no registry client here)."""

    async def manifest(
        self, repository: DockerRef, tag: str, max_bytes: int
    ) -> tuple[str, bytes] | None:
        """The media type and bytes of the manifest ``tag`` in ``repository``; None when the
        tag does not exist. Must not return more than ``max_bytes`` (raise instead)."""
        ...

    async def blob(self, repository: DockerRef, digest: str, max_bytes: int) -> bytes:
        """The blob ``digest`` of ``repository``, at most ``max_bytes`` (raise beyond)."""
        ...


@dataclass(frozen=True, slots=True)
class Attachment:
    media_type: str
    payload: bytes
    annotations: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Layer:
    media_type: str
    digest: str
    size: int
    annotations: dict[str, str]


def _sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def attachment_tag(manifest_digest: str) -> str:
    algorithm, _, encoded = manifest_digest.partition(":")
    return f"{algorithm}-{encoded}.sig"


def parse_manifest(media_type: str, data: bytes) -> list[_Layer]:
    if media_type in INDEX_TYPES:
        raise AttachmentError("the .sig tag is an index, not a signature manifest")
    if len(data) > MAX_MANIFEST_BYTES:
        raise AttachmentError(f"signature manifest larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        doc = boundedjson.loads(data, max_bytes=MAX_MANIFEST_BYTES)
    except boundedjson.JSONRefused as e:
        raise AttachmentError(f"signature manifest: {e}") from None
    if not isinstance(doc, dict):
        raise AttachmentError("signature manifest is not a JSON object")
    declared = doc.get("mediaType", media_type)
    if declared in INDEX_TYPES or "manifests" in doc:
        raise AttachmentError("the .sig tag is an index, not a signature manifest")
    if declared not in (OCI_MANIFEST, DOCKER_MANIFEST) or doc.get("schemaVersion") != 2:
        raise AttachmentError(f"signature manifest has unsupported media type {declared!r}")
    layers = doc.get("layers")
    if not isinstance(layers, list):
        raise AttachmentError("signature manifest has no layers array")
    if len(layers) > MAX_LAYERS:
        raise AttachmentError(f"signature manifest has more than {MAX_LAYERS} layers")
    out = []
    for layer in layers:
        if not isinstance(layer, dict):
            raise AttachmentError("signature manifest layer is not an object")
        mt, digest, size = layer.get("mediaType"), layer.get("digest"), layer.get("size")
        annotations = layer.get("annotations") or {}
        if not isinstance(mt, str) or not isinstance(digest, str):
            raise AttachmentError("signature manifest layer lacks mediaType or digest")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise AttachmentError("signature manifest layer has an invalid size")
        if not isinstance(annotations, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in annotations.items()
        ):
            raise AttachmentError("signature manifest layer annotations are not strings")
        if not digest.startswith("sha256:") or len(digest) != 71:
            raise AttachmentError(f"signature manifest layer digest {digest!r} is not sha256")
        out.append(_Layer(mt, digest, size, annotations))
    return out


async def fetch_attachments(
    artifacts: SignatureArtifacts, repository: DockerRef, manifest_digest: str
) -> list[Attachment]:
    """The attachments of ``manifest_digest``; empty when there is no .sig tag."""
    found = await artifacts.manifest(
        repository, attachment_tag(manifest_digest), MAX_MANIFEST_BYTES
    )
    if found is None:
        return []
    media_type, data = found
    out = []
    for layer in parse_manifest(media_type, data):
        if layer.media_type != SIGNATURE_MEDIA_TYPE:
            out.append(Attachment(layer.media_type, b"", layer.annotations))
            continue  # another kind of attachment: never fetched, counted only
        if layer.size > MAX_PAYLOAD_BYTES:
            raise AttachmentError(f"signature payload larger than {MAX_PAYLOAD_BYTES} bytes")
        blob = await artifacts.blob(repository, layer.digest, layer.size)
        actual = await asyncio.to_thread(_sha256_hex, blob)
        if len(blob) != layer.size or f"sha256:{actual}" != layer.digest:
            raise AttachmentError(f"signature payload {layer.digest} does not match its digest")
        out.append(Attachment(layer.media_type, blob, layer.annotations))
    return out


def from_lookaside_json(data: bytes) -> Attachment:
    """A sigstore signature stored in a lookaside (``\\x00sigstore-json\\n`` + JSON)."""
    try:
        doc = boundedjson.loads(data, max_bytes=MAX_PAYLOAD_BYTES * 2)
        doc = boundedjson.exact_fields(
            doc, "sigstore signature", {"mimeType", "payload"}, {"annotations"}
        )
    except boundedjson.JSONRefused as e:
        raise AttachmentError(str(e)) from None
    annotations = doc.get("annotations") or {}
    if not isinstance(doc["mimeType"], str) or not isinstance(doc["payload"], str):
        raise AttachmentError("sigstore signature mimeType or payload is not a string")
    if not isinstance(annotations, dict) or not all(
        isinstance(v, str) for v in annotations.values()
    ):
        raise AttachmentError("sigstore signature annotations are not strings")
    try:
        payload = base64.b64decode(doc["payload"], validate=True)
    except (binascii.Error, ValueError):
        raise AttachmentError("sigstore signature payload is not base64") from None
    return Attachment(doc["mimeType"], payload, annotations)


def verify_signature(public_key: ec.EllipticCurvePublicKey, attachment: Attachment) -> None:
    """Check the annotation's ECDSA signature over the payload; raise AttachmentError."""
    encoded = attachment.annotations.get(SIGNATURE_ANNOTATION)
    if encoded is None:
        raise AttachmentError(f"missing {SIGNATURE_ANNOTATION} annotation")
    try:
        signature = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise AttachmentError("the signature annotation is not base64") from None
    algorithm = _CURVE_HASH.get(public_key.curve.name)
    if algorithm is None:
        raise AttachmentError(f"unsupported ECDSA curve {public_key.curve.name}")
    try:
        public_key.verify(signature, attachment.payload, ec.ECDSA(algorithm()))
    except InvalidSignature:
        raise AttachmentError("cryptographic signature verification failed") from None
