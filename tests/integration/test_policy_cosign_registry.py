"""cosign's attachment layout through a real docker-registry: the ``sha256-<hex>.sig`` tag
holding the payload cosign signed (tests/data/cosign) verifies; other keys, a missing tag and
a ``.sig`` tag that is an index do not. The fetcher here is a small test adapter over the
distribution API (the daemon's own comes with the pull path)."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from registry import Registry

from linerd.policy import Evaluator, parse_files, parse_policy
from linerd.policy.refs import DockerRef
from linerd.policy.sigstore import SIGNATURE_ANNOTATION, SIGNATURE_MEDIA_TYPE, attachment_tag

pytestmark = pytest.mark.integration

DATA = Path(__file__).parent.parent / "data" / "cosign"
PAYLOAD = (DATA / "payload.json").read_bytes()
SIGNATURE = (DATA / "signature.b64").read_text().strip()
DIGEST = "sha256:" + hashlib.sha256((DATA / "manifest.json").read_bytes()).hexdigest()
REPO = "cosign-signed-single-sample"
SIGNED_AS = f"192.168.64.2:5000/{REPO}"  # the identity inside cosign's payload
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


class RegistryArtifacts:
    """`SignatureArtifacts` over plain HTTP to the test registry."""

    def __init__(self, reg: Registry) -> None:
        self.reg = reg

    async def manifest(
        self, repository: DockerRef, tag: str, max_bytes: int
    ) -> tuple[str, bytes] | None:
        async with httpx.AsyncClient() as client:
            response = await client.get(
                f"{self.reg.url}/v2/{repository.path}/manifests/{tag}",
                headers={"Accept": f"{OCI_MANIFEST}, {OCI_INDEX}"},
            )
        if response.status_code == 404:
            return None
        response.raise_for_status()
        if len(response.content) > max_bytes:
            raise ValueError("manifest too large")
        return response.headers["content-type"], response.content

    async def blob(self, repository: DockerRef, digest: str, max_bytes: int) -> bytes:
        async with httpx.AsyncClient() as client:
            response = await client.get(
                f"{self.reg.url}/v2/{repository.path}/blobs/{digest}", follow_redirects=True
            )
        response.raise_for_status()
        if len(response.content) > max_bytes:
            raise ValueError("blob too large")
        return response.content


def _descriptor(media_type: str, data: bytes, **extra: Any) -> dict[str, Any]:
    return {
        "mediaType": media_type,
        "digest": "sha256:" + hashlib.sha256(data).hexdigest(),
        "size": len(data),
        **extra,
    }


@pytest.fixture(scope="module")
def signed(registry: Registry) -> Registry:
    config = b"{}"
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": _descriptor("application/vnd.oci.image.config.v1+json", config),
        "layers": [
            _descriptor(
                SIGNATURE_MEDIA_TYPE, PAYLOAD, annotations={SIGNATURE_ANNOTATION: SIGNATURE}
            )
        ],
    }
    registry.push_raw(
        REPO,
        attachment_tag(DIGEST),
        json.dumps(manifest).encode(),
        OCI_MANIFEST,
        [config, PAYLOAD],
    )
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
    registry.push_raw(
        REPO, attachment_tag("sha256:" + "1" * 64), json.dumps(index).encode(), OCI_INDEX
    )
    return registry


def _verdict(reg: Registry, key: str, digest: str = DIGEST) -> Any:
    requirement = {
        "type": "sigstoreSigned",
        "keyPath": str(DATA / key),
        "signedIdentity": {"type": "exactRepository", "dockerRepository": SIGNED_AS},
    }
    policy = parse_policy(
        json.dumps(
            {"default": [{"type": "reject"}], "transports": {"docker": {reg.host: [requirement]}}}
        ).encode()
    )
    registries = parse_files(
        [("/test.yaml", f"docker:\n  '{reg.host}':\n    use-sigstore-attachments: true\n")]
    )
    evaluator = Evaluator(policy, registries)
    return asyncio.run(
        evaluator.evaluate(f"{reg.host}/{REPO}:latest", digest, artifacts=RegistryArtifacts(reg))
    )


def test_cosign_signature_in_the_registry_verifies(signed: Registry) -> None:
    verdict = _verdict(signed, "cosign.pub")
    assert verdict.accepted, verdict.message


def test_other_key_rejected(signed: Registry) -> None:
    verdict = _verdict(signed, "cosign2.pub")
    assert not verdict.accepted and "verification failed" in verdict.reason


def test_no_sig_tag_rejected(signed: Registry) -> None:
    verdict = _verdict(signed, "cosign.pub", "sha256:" + "2" * 64)
    assert not verdict.accepted and "no signature exists" in verdict.reason


def test_sig_tag_that_is_an_index_rejected(signed: Registry) -> None:
    verdict = _verdict(signed, "cosign.pub", "sha256:" + "1" * 64)
    assert not verdict.accepted and "is an index" in verdict.reason
