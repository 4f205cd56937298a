"""cosign verification against signatures the real cosign made (tests/data/cosign), tampered
ones, hostile attachments, and the evaluator's verdicts and cache (fake artifact fetcher)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from linerd.policy import Evaluator, parse_files, parse_policy
from linerd.policy.payload import COSIGN_TYPE, SIMPLE_SIGNING_TYPE, PayloadError, parse_claims
from linerd.policy.policyfile import load_public_key
from linerd.policy.refs import DockerRef
from linerd.policy.sigstore import (
    SIGNATURE_ANNOTATION,
    SIGNATURE_MEDIA_TYPE,
    Attachment,
    AttachmentError,
    verify_signature,
)

pytestmark = pytest.mark.unit

DATA = Path(__file__).parent.parent / "data" / "cosign"
PAYLOAD = (DATA / "payload.json").read_bytes()
SIGNATURE = (DATA / "signature.b64").read_text().strip()
DIGEST = "sha256:" + hashlib.sha256((DATA / "manifest.json").read_bytes()).hexdigest()
REPO = "192.168.64.2:5000/cosign-signed-single-sample"


def _key(name: str = "cosign.pub") -> Any:
    return load_public_key((DATA / name).read_bytes(), name)


def _attachment(payload: bytes = PAYLOAD, signature: str = SIGNATURE) -> Attachment:
    return Attachment(SIGNATURE_MEDIA_TYPE, payload, {SIGNATURE_ANNOTATION: signature})


def test_cosign_vector_verifies() -> None:
    verify_signature(_key(), _attachment())


@pytest.mark.parametrize(
    "attachment",
    [
        _attachment(payload=PAYLOAD.replace(b"single", b"double")),
        _attachment(payload=PAYLOAD + b" "),
        _attachment(
            signature=base64.b64encode(
                bytes([b ^ (i == 20) for i, b in enumerate(base64.b64decode(SIGNATURE))])
            ).decode()
        ),
        Attachment(SIGNATURE_MEDIA_TYPE, PAYLOAD, {}),
        _attachment(signature="not base64!"),
    ],
    ids=["payload-edited", "payload-extended", "signature-flipped", "no-annotation", "bad-base64"],
)
def test_tampered_vectors_do_not_verify(attachment: Attachment) -> None:
    with pytest.raises(AttachmentError):
        verify_signature(_key(), attachment)


def test_other_key_does_not_verify() -> None:
    with pytest.raises(AttachmentError, match="verification failed"):
        verify_signature(_key("cosign2.pub"), _attachment())


@dataclass
class FakeArtifacts:
    """Stands in for the registry: one .sig manifest and its blobs."""

    manifests: dict[str, tuple[str, bytes]] = field(default_factory=dict)
    blobs: dict[str, bytes] = field(default_factory=dict)
    calls: int = 0

    async def manifest(
        self, repository: DockerRef, tag: str, max_bytes: int
    ) -> tuple[str, bytes] | None:
        self.calls += 1
        assert repository.name_only and str(repository) == REPO
        return self.manifests.get(tag)

    async def blob(self, repository: DockerRef, digest: str, max_bytes: int) -> bytes:
        return self.blobs[digest]


def _sig_manifest(
    layers: list[tuple[bytes, dict[str, str], str]],
    media_type: str = "application/vnd.oci.image.manifest.v1+json",
) -> tuple[FakeArtifacts, bytes]:
    artifacts = FakeArtifacts()
    descs = []
    for blob, notes, mt in layers:
        digest = "sha256:" + hashlib.sha256(blob).hexdigest()
        artifacts.blobs[digest] = blob
        descs.append({"mediaType": mt, "digest": digest, "size": len(blob), "annotations": notes})
    doc = {"schemaVersion": 2, "mediaType": media_type, "config": {}, "layers": descs}
    data = json.dumps(doc).encode()
    artifacts.manifests[f"sha256-{DIGEST.split(':')[1]}.sig"] = (media_type, data)
    return artifacts, data


def _evaluator(
    identity: dict[str, str] | None = None, key: str = "cosign.pub", generation: int = 0
) -> Evaluator:
    req: dict[str, Any] = {"type": "sigstoreSigned", "keyPath": str(DATA / key)}
    if identity is not None:
        req["signedIdentity"] = identity
    policy = parse_policy(
        json.dumps(
            {"default": [{"type": "reject"}], "transports": {"docker": {REPO: [req]}}}
        ).encode()
    )
    registries = parse_files([("/r.yaml", "default-docker:\n  use-sigstore-attachments: true\n")])
    return Evaluator(policy, registries, generation)


def _good() -> FakeArtifacts:
    return _sig_manifest([(PAYLOAD, {SIGNATURE_ANNOTATION: SIGNATURE}, SIGNATURE_MEDIA_TYPE)])[0]


def _verdict(evaluator: Evaluator, artifacts: FakeArtifacts, ref: str = f"{REPO}:latest") -> Any:
    return asyncio.run(evaluator.evaluate(ref, DIGEST, artifacts=artifacts))


def test_evaluator_accepts_cosign_signature_with_match_repository() -> None:
    verdict = _verdict(_evaluator({"type": "matchRepository"}), _good())
    assert verdict.accepted, verdict.message
    assert verdict.requirement.startswith("sigstoreSigned")


def test_evaluator_rejects_with_the_deciding_requirement() -> None:
    # cosign's identity has no tag: the default matchRepoDigestOrExact refuses it.
    verdict = _verdict(_evaluator(), _good())
    assert not verdict.accepted
    assert (
        "sigstoreSigned" in verdict.requirement and "matchRepoDigestOrExact" in verdict.requirement
    )
    assert "is not accepted" in verdict.reason
    other_key = _verdict(_evaluator({"type": "matchRepository"}, key="cosign2.pub"), _good())
    assert not other_key.accepted and "verification failed" in other_key.reason
    unsigned = _verdict(_evaluator({"type": "matchRepository"}), FakeArtifacts())
    assert not unsigned.accepted and "no signature exists" in unsigned.reason
    other_digest = asyncio.run(
        _evaluator({"type": "matchRepository"}).evaluate(
            f"{REPO}:latest", "sha256:" + "0" * 64, artifacts=_good()
        )
    )
    assert not other_digest.accepted


def test_one_valid_among_several() -> None:
    artifacts, _ = _sig_manifest(
        [
            (
                PAYLOAD,
                {SIGNATURE_ANNOTATION: base64.b64encode(b"junk").decode()},
                SIGNATURE_MEDIA_TYPE,
            ),
            (b"{}", {}, "application/vnd.dev.cosign.attestation"),
            (PAYLOAD, {SIGNATURE_ANNOTATION: SIGNATURE}, SIGNATURE_MEDIA_TYPE),
        ]
    )
    assert _verdict(_evaluator({"type": "matchRepository"}), artifacts).accepted


def _deep_manifest() -> FakeArtifacts:
    artifacts = _good()
    tag = next(iter(artifacts.manifests))
    deep = b'{"schemaVersion": 2, "layers": ' + b"[" * 100 + b"]" * 100 + b"}"
    artifacts.manifests[tag] = ("application/vnd.oci.image.manifest.v1+json", deep)
    return artifacts


@pytest.mark.parametrize(
    ("artifacts", "reason"),
    [
        (_sig_manifest([], media_type="application/vnd.oci.image.index.v1+json")[0], "is an index"),
        (_deep_manifest(), "nested deeper"),
    ],
    ids=["index", "deep-json"],
)
def test_hostile_attachments_refused(artifacts: FakeArtifacts, reason: str) -> None:
    verdict = _verdict(_evaluator({"type": "matchRepository"}), artifacts)
    assert not verdict.accepted and reason in verdict.reason, verdict.reason


def test_payload_parsed_strictly() -> None:
    assert parse_claims(PAYLOAD, COSIGN_TYPE).manifest_digest == DIGEST
    with pytest.raises(PayloadError, match="unrecognized signature type"):
        parse_claims(PAYLOAD, SIMPLE_SIGNING_TYPE)
    with pytest.raises(PayloadError, match="nested deeper"):
        parse_claims(b"[" * 100 + b"]" * 100, COSIGN_TYPE)
    with pytest.raises(PayloadError, match="unknown field"):
        parse_claims(PAYLOAD.replace(b'"type"', b'"extra":1,"type"'), COSIGN_TYPE)
    with pytest.raises(PayloadError, match="larger than"):
        parse_claims(b" " * ((4 << 20) + 1), COSIGN_TYPE)


def test_oversized_and_mismatched_layers_refused() -> None:
    artifacts, data = _sig_manifest(
        [(PAYLOAD, {SIGNATURE_ANNOTATION: SIGNATURE}, SIGNATURE_MEDIA_TYPE)]
    )
    doc = json.loads(data)
    doc["layers"][0]["size"] = 64 << 20
    tag = next(iter(artifacts.manifests))
    artifacts.manifests[tag] = (doc["mediaType"], json.dumps(doc).encode())
    verdict = _verdict(_evaluator({"type": "matchRepository"}), artifacts)
    assert not verdict.accepted and "larger than" in verdict.reason
    doc["layers"][0]["size"] = len(PAYLOAD)
    artifacts.manifests[tag] = (doc["mediaType"], json.dumps(doc).encode())
    artifacts.blobs[doc["layers"][0]["digest"]] = PAYLOAD.replace(b"single", b"double")
    verdict = _verdict(_evaluator({"type": "matchRepository"}), artifacts)
    assert not verdict.accepted and "does not match its digest" in verdict.reason
    big = b" " * ((4 << 20) + 1)
    artifacts.manifests[tag] = ("application/vnd.oci.image.manifest.v1+json", big)
    verdict = _verdict(_evaluator({"type": "matchRepository"}), artifacts)
    assert not verdict.accepted and "larger than" in verdict.reason


def test_lookaside_sigstore_json_as_cosign_stored_it(tmp_path: Path) -> None:
    sigdir = tmp_path / f"cosign-signed-single-sample@sha256={DIGEST.split(':')[1]}"
    sigdir.mkdir()
    (sigdir / "signature-1").write_bytes((DATA / "signature-1").read_bytes())
    req = {
        "type": "sigstoreSigned",
        "keyPath": str(DATA / "cosign.pub"),
        "signedIdentity": {"type": "matchRepository"},
    }
    policy = parse_policy(json.dumps({"default": [req]}).encode())
    registries = parse_files([("/r.yaml", f"default-docker:\n  lookaside: file://{tmp_path}\n")])
    verdict = asyncio.run(Evaluator(policy, registries).evaluate(f"{REPO}:latest", DIGEST))
    assert verdict.accepted, verdict.message


def test_verdicts_cached_per_digest_reference_and_generation() -> None:
    artifacts = _good()
    evaluator = _evaluator({"type": "matchRepository"})
    assert _verdict(evaluator, artifacts).accepted
    assert _verdict(evaluator, artifacts).accepted
    assert artifacts.calls == 1
    _verdict(evaluator, artifacts, ref=f"{REPO}:other")
    assert artifacts.calls == 2
    reloaded = _evaluator({"type": "matchRepository"}, generation=1)
    reloaded._cache = evaluator._cache  # the same cache across a reload: generation keys it
    _verdict(reloaded, artifacts)
    assert artifacts.calls == 3


def test_fetch_failure_is_a_rejection_not_cached() -> None:
    class Broken(FakeArtifacts):
        async def manifest(
            self, repository: DockerRef, tag: str, max_bytes: int
        ) -> tuple[str, bytes] | None:
            self.calls += 1
            raise OSError("connection refused")

    artifacts = Broken()
    evaluator = _evaluator({"type": "matchRepository"})
    first = _verdict(evaluator, artifacts)
    assert not first.accepted and "connection refused" in first.reason and not first.cacheable
    _verdict(evaluator, artifacts)
    assert artifacts.calls == 2


def test_no_signatures_read_when_no_requirement_needs_them() -> None:
    policy = parse_policy(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}).encode())
    registries = parse_files([("/r.yaml", "default-docker:\n  use-sigstore-attachments: true\n")])
    artifacts = _good()
    verdict = asyncio.run(
        Evaluator(policy, registries).evaluate("busybox", DIGEST, artifacts=artifacts)
    )
    assert verdict.accepted and verdict.requirement == "insecureAcceptAnything"
    assert artifacts.calls == 0
    rejecting = parse_policy(json.dumps({"default": [{"type": "reject"}]}).encode())
    verdict = asyncio.run(Evaluator(rejecting, registries).evaluate("busybox", DIGEST))
    assert not verdict.accepted and verdict.requirement == "reject" and verdict.scope == "default"
