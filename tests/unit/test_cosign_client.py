"""liner.cosign: cosign's key, payload and signature-manifest formats, checked against facts
nobody here wrote (go-securesystemslib's encrypted-envelope vectors, the cosign-made payload
and signature in tests/data/cosign) and against the daemon's verifier."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest

from liner import cosign

pytestmark = pytest.mark.unit

DATA = Path(__file__).parent.parent / "data" / "cosign"
COSIGN_PAYLOAD = (DATA / "payload.json").read_bytes()
COSIGN_SIGNATURE = (DATA / "signature.b64").read_text().strip()
COSIGN_DIGEST = "sha256:" + hashlib.sha256((DATA / "manifest.json").read_bytes()).hexdigest()

# go-securesystemslib's encrypted package test vectors (encrypted/encrypted_test.go at
# bcb0d9f5): "reallyimportant" under the passphrase "supersecret", with each of its scrypt
# parameter sets (legacy twice, standard, OWASP).
SECURESYSTEMSLIB_VECTORS = [
    b'{"kdf":{"name":"scrypt","params":{"N":32768,"r":8,"p":1},"salt":"N9a7x5JFGbrtB2uBR81jPwp0eiLR4A7FV3mjVAQrg1g="},"cipher":{"name":"nacl/secretbox","nonce":"2h8HxMmgRfuYdpswZBQaU3xJ1nkA/5Ik"},"ciphertext":"SEW6sUh0jf2wfdjJGPNS9+bkk2uB+Cxamf32zR8XkQ=="}',
    b'{"kdf":{"name":"scrypt","params":{"N":32768,"r":8,"p":1},"salt":"WO3mVvyTwJ9vwT5/Tk5OW5WPIBUofMjcpEfrLnfY4uA="},"cipher":{"name":"nacl/secretbox","nonce":"tCy7HcTFr4uxv4Nrg/DWmncuZ148U1MX"},"ciphertext":"08n43p5G5yviPEZpO7tPPF4aZQkWiWjkv4taFdhDBA0tamKH4nw="}',
    b'{"kdf":{"name":"scrypt","params":{"N":65536,"r":8,"p":1},"salt":"FhzPOt9/bJG4PTq6lQ6ecG6GzaOuOy/ynG5+yRiFlNs="},"cipher":{"name":"nacl/secretbox","nonce":"aw1ng1jHaDz/tQ7V2gR9O2+IGQ8xJEuE"},"ciphertext":"HycvuLZL4sYH0BrYTh4E/H20VtAW6u5zL5Pr+IBjYLYnCPzDkq8="}',
    b'{"kdf":{"name":"scrypt","params":{"N":131072,"r":8,"p":1},"salt":"m38E3kouJTtiheLQN22NQ8DTito5hrjpUIskqcd375k="},"cipher":{"name":"nacl/secretbox","nonce":"Y6PM13yA+o44pE/W1ZBwczeGnTV/m9Zc"},"ciphertext":"6H8sqj1K6B6yDjtH5AQ6lbFigg/C2yDDJc4rYJ79w9aVPImFIPI="}',
]  # fmt: skip
UNSUPPORTED_PARAMS = b'{"kdf":{"name":"scrypt","params":{"N":99,"r":99,"p":99},"salt":"cZFcQJdwPhPyhU1R4qkl0qVOIjZd4V/7LYYAavq166k="},"cipher":{"name":"nacl/secretbox","nonce":"7vhRS7j0hEPBWV05skAdgLj81AkGeE7U"},"ciphertext":"6WYU/YSXVbYzl/NzaeAzmjLyfFhOOjLc0d8/GFV0aBFdJvyCcXc="}'  # noqa: E501


def test_decrypts_go_securesystemslib_vectors() -> None:
    # The first is Encrypt's output (TestDecrypt); the others Marshal's (TestKDFSettingVectors:
    # the plaintext is the JSON of a Go []byte, a base64 string).
    first, *marshalled = SECURESYSTEMSLIB_VECTORS
    assert cosign.decrypt(first, b"supersecret") == b"reallyimportant"
    for vector in marshalled:
        decoded = base64.b64decode(json.loads(cosign.decrypt(vector, b"supersecret")))
        assert decoded == b"reallyimportant"


def test_wrong_password_and_tampering_refused() -> None:
    with pytest.raises(cosign.SignError, match="wrong password"):
        cosign.decrypt(SECURESYSTEMSLIB_VECTORS[0], b"supersecreT")
    doc = json.loads(SECURESYSTEMSLIB_VECTORS[0])
    sealed = bytearray(base64.b64decode(doc["ciphertext"]))
    sealed[0] ^= 0xFF
    doc["ciphertext"] = base64.b64encode(bytes(sealed)).decode()
    with pytest.raises(cosign.SignError):
        cosign.decrypt(json.dumps(doc).encode(), b"supersecret")


def test_unsupported_scrypt_parameters_refused_before_any_work() -> None:
    # A hostile key file cannot ask for an enormous scrypt (N=2**30 would want 1 TiB).
    with pytest.raises(cosign.SignError, match="unsupported scrypt parameters"):
        cosign.decrypt(UNSUPPORTED_PARAMS, b"supersecret")
    huge = json.loads(UNSUPPORTED_PARAMS)
    huge["kdf"]["params"] = {"N": 1 << 30, "r": 8, "p": 1}
    with pytest.raises(cosign.SignError, match="unsupported scrypt parameters"):
        cosign.decrypt(json.dumps(huge).encode(), b"x")


def test_generated_key_pair_has_cosign_layout() -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    pair = cosign.generate(b"pw")
    text = pair.private_pem.decode()
    assert text.startswith("-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\n")
    assert text.endswith("-----END ENCRYPTED SIGSTORE PRIVATE KEY-----\n")
    assert all(len(line) <= 64 for line in text.splitlines())
    _, body = cosign.pem_decode(pair.private_pem)
    envelope = json.loads(body)
    # Go's field order and compact JSON, the "standard" parameters Encrypt writes.
    assert list(envelope) == ["kdf", "cipher", "ciphertext"]
    assert list(envelope["kdf"]) == ["name", "params", "salt"]
    assert envelope["kdf"]["name"] == "scrypt"
    assert envelope["kdf"]["params"] == {"N": 65536, "r": 8, "p": 1}
    assert list(envelope["kdf"]["params"]) == ["N", "r", "p"]
    assert len(base64.b64decode(envelope["kdf"]["salt"])) == 32
    assert envelope["cipher"]["name"] == "nacl/secretbox"
    assert len(base64.b64decode(envelope["cipher"]["nonce"])) == 24
    assert b" " not in body
    der = cosign.decrypt(body, b"pw")
    private = serialization.load_der_private_key(der, None)  # PKCS #8
    assert isinstance(private, ec.EllipticCurvePrivateKey) and private.curve.name == "secp256r1"
    public = serialization.load_pem_public_key(pair.public_pem)
    assert pair.public_pem.startswith(b"-----BEGIN PUBLIC KEY-----\n")
    assert public.public_numbers() == private.public_key().public_numbers()  # type: ignore[union-attr]
    assert cosign.load_private(pair.private_pem, b"pw").private_numbers() == (
        private.private_numbers()
    )
    with pytest.raises(cosign.SignError, match="wrong password"):
        cosign.load_private(pair.private_pem, b"other")


def test_older_cosign_pem_type_read_and_others_refused() -> None:
    pair = cosign.generate(b"")
    _, body = cosign.pem_decode(pair.private_pem)
    old = cosign.pem_encode("ENCRYPTED COSIGN PRIVATE KEY", body)
    assert cosign.load_private(old, b"") is not None
    with pytest.raises(cosign.SignError, match="unsupported PEM type"):
        cosign.load_private(cosign.pem_encode("PRIVATE KEY", body), b"")
    with pytest.raises(cosign.SignError, match="too large"):
        cosign.load_private(b"x" * (cosign.MAX_KEY_FILE + 1), b"")


def test_payload_is_byte_for_byte_cosigns() -> None:
    identity = "192.168.64.2:5000/cosign-signed-single-sample"
    assert cosign.payload(identity, COSIGN_DIGEST) == COSIGN_PAYLOAD
    # ... and the cosign-made signature over it verifies with the client's verifier too.
    public = (DATA / "cosign.pub").read_bytes()
    assert cosign.verify(public, COSIGN_PAYLOAD, COSIGN_SIGNATURE)
    assert not cosign.verify((DATA / "cosign2.pub").read_bytes(), COSIGN_PAYLOAD, COSIGN_SIGNATURE)


def test_identity_names_the_repository_as_cosign_does() -> None:
    assert cosign.docker_reference("docker.io", "library/busybox") == (
        "index.docker.io/library/busybox"
    )
    assert cosign.docker_reference("127.0.0.1:5000", "a/b") == "127.0.0.1:5000/a/b"


@pytest.mark.parametrize(
    ("text", "host", "repository", "tag", "digest"),
    [
        ("busybox", "docker.io", "library/busybox", "latest", None),
        ("index.docker.io/x/y:1", "docker.io", "x/y", "1", None),
        ("127.0.0.1:5000/a/b:v1", "127.0.0.1:5000", "a/b", "v1", None),
        ("localhost/a", "localhost", "a", "latest", None),
        ("r.example/a@sha256:" + "1" * 64, "r.example", "a", None, "sha256:" + "1" * 64),
    ],
)
def test_split_reference(
    text: str, host: str, repository: str, tag: str | None, digest: str | None
) -> None:
    name = cosign.split_reference(text)
    assert (name.host, name.repository, name.tag, name.digest) == (host, repository, tag, digest)


def test_signature_image_has_cosigns_layout_and_verifies_with_the_daemon() -> None:
    from linerd.policy import sigstore
    from linerd.policy.payload import COSIGN_TYPE, parse_claims
    from linerd.policy.policyfile import load_public_key

    pair = cosign.generate(b"")
    private = cosign.load_private(pair.private_pem, b"")
    digest = "sha256:" + "ab" * 32
    signed = cosign.payload("127.0.0.1:5000/app", digest)
    image = cosign.signature_image(signed, cosign.sign(private, signed))
    manifest = json.loads(image.manifest.data)
    assert list(manifest) == ["schemaVersion", "mediaType", "config", "layers"]
    assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert manifest["config"]["mediaType"] == "application/vnd.oci.image.config.v1+json"
    assert manifest["config"]["digest"] == image.config.digest
    (layer,) = manifest["layers"]
    assert list(layer) == ["mediaType", "size", "digest", "annotations"]
    assert layer["mediaType"] == "application/vnd.dev.cosign.simplesigning.v1+json"
    assert layer["digest"] == "sha256:" + hashlib.sha256(signed).hexdigest()
    assert list(layer["annotations"]) == ["dev.cosignproject.cosign/signature"]
    # The config go-containerregistry writes for cosign's one-layer signature image.
    assert image.config.data == (
        b'{"architecture":"","created":"0001-01-01T00:00:00Z","history":[{"created":'
        b'"0001-01-01T00:00:00Z"}],"os":"","rootfs":{"type":"layers","diff_ids":["'
        + layer["digest"].encode()
        + b'"]},"config":{}}'
    )
    assert cosign.attachment_tag(digest) == "sha256-" + "ab" * 32 + ".sig"
    assert sigstore.attachment_tag(digest) == cosign.attachment_tag(digest)
    # The daemon's verifier (the policy engine's) accepts it; a flipped byte it does not.
    (parsed,) = sigstore.parse_manifest(image.manifest.media_type, image.manifest.data)
    attachment = sigstore.Attachment(parsed.media_type, signed, parsed.annotations)
    key = load_public_key(pair.public_pem, "test")
    sigstore.verify_signature(key, attachment)
    claims = parse_claims(signed, COSIGN_TYPE)
    assert (claims.docker_reference, claims.manifest_digest) == ("127.0.0.1:5000/app", digest)
    tampered = sigstore.Attachment(
        parsed.media_type, signed.replace(b"app", b"apq"), parsed.annotations
    )
    with pytest.raises(sigstore.AttachmentError):
        sigstore.verify_signature(key, tampered)
