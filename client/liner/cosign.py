"""cosign's formats, client side: its encrypted key pair, its signature payload and the
``sha256-<hex>.sig`` signature manifest, so `liner keys generate` and `liner images sign`
write what cosign writes and cosign (and containers/image) read.

Facts, not cosign's code: the private key is PKCS #8 DER encrypted in go-securesystemslib's
``encrypted`` envelope (JSON: scrypt KDF with a 32-byte salt and the "standard" parameters
N=65536 r=8 p=1 its ``Encrypt`` uses (older cosign keys have the legacy N=32768, read too);
nacl/secretbox with a 24-byte nonce; Go ``[]byte`` as standard base64),
PEM type ``ENCRYPTED SIGSTORE PRIVATE KEY`` (``ENCRYPTED COSIGN PRIVATE KEY`` from older
cosign is read too); the public key is PKIX PEM ``PUBLIC KEY``. The payload is Go's compact
JSON of ``{"critical":{"identity":{"docker-reference"},"image":{"docker-manifest-digest"},
"type"},"optional":null}`` with the repository name as cosign writes it (Docker Hub as
``index.docker.io``). The signature is ECDSA P-256 over SHA-256, ASN.1 DER, standard base64,
in the layer annotation ``dev.cosignproject.cosign/signature`` of the one layer (media type
``application/vnd.dev.cosign.simplesigning.v1+json``) of an OCI image manifest.

The crypto libraries (cryptography, PyNaCl) are the ``sign`` extra of the liner package:
`require` names it when they are missing.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any

SIGSTORE_PEM_TYPE = "ENCRYPTED SIGSTORE PRIVATE KEY"
COSIGN_PEM_TYPE = "ENCRYPTED COSIGN PRIVATE KEY"
PUBLIC_PEM_TYPE = "PUBLIC KEY"
SIGNATURE_MEDIA_TYPE = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
PAYLOAD_TYPE = "cosign container image signature"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
# go-securesystemslib's scrypt parameter sets (legacy, standard = what Encrypt writes, OWASP):
# only these are read (as there), so a hostile key file cannot ask for gigabytes of memory.
SCRYPT_WRITE = {"N": 65536, "r": 8, "p": 1}
SCRYPT_ACCEPTED = ((32768, 8, 1), (65536, 8, 1), (131072, 8, 1))
SALT_BYTES = 32
NONCE_BYTES = 24
KEY_BYTES = 32
MAX_KEY_FILE = 64 << 10
_DOCKER_HUB = "docker.io"
_DOCKER_HUB_REGISTRY = "index.docker.io"  # how go-containerregistry names Docker Hub
EXTRA_HINT = "install liner's `sign` extra (pip install 'liner[sign]')"


class SignError(Exception):
    """A key or signature problem, in one line."""


def require() -> None:
    """Fail with the extra to install when the crypto libraries are missing."""
    try:
        import cryptography  # noqa: F401
        import nacl.secret  # noqa: F401
    except ImportError as e:
        raise SignError(f"signing needs {e.name}: {EXTRA_HINT}") from None


# -- PEM --------------------------------------------------------------------------------------


def pem_encode(kind: str, data: bytes) -> bytes:
    """Go's pem.EncodeToMemory: base64 in 64-character lines."""
    text = base64.b64encode(data).decode()
    lines = [text[i : i + 64] for i in range(0, len(text), 64)]
    body = "".join(f"{line}\n" for line in lines)
    return f"-----BEGIN {kind}-----\n{body}-----END {kind}-----\n".encode()


def pem_decode(data: bytes) -> tuple[str, bytes]:
    """The type and bytes of the first PEM block."""
    text = data.decode("ascii", errors="replace")
    begin = text.find("-----BEGIN ")
    if begin < 0:
        raise SignError("not a PEM file")
    head_end = text.find("-----", begin + 11)
    kind = text[begin + 11 : head_end]
    end_marker = f"-----END {kind}-----"
    end = text.find(end_marker, head_end)
    if head_end < 0 or end < 0:
        raise SignError("not a PEM file")
    body = "".join(text[head_end + 5 : end].split())
    try:
        return kind, base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise SignError("the PEM block is not base64") from None


# -- the encrypted envelope ---------------------------------------------------------------------


def _scrypt(password: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
    # maxmem: 128 * r * N bytes, with room (OpenSSL's default cap is 32 MiB).
    return hashlib.scrypt(
        password, salt=salt, n=n, r=r, p=p, dklen=KEY_BYTES, maxmem=256 * r * n + (1 << 20)
    )


def encrypt(plaintext: bytes, password: bytes) -> bytes:
    """The go-securesystemslib envelope (compact JSON, its field order)."""
    import nacl.secret

    salt, nonce = os.urandom(SALT_BYTES), os.urandom(NONCE_BYTES)
    key = _scrypt(password, salt, SCRYPT_WRITE["N"], SCRYPT_WRITE["r"], SCRYPT_WRITE["p"])
    sealed = nacl.secret.SecretBox(key).encrypt(plaintext, nonce).ciphertext
    envelope = {
        "kdf": {"name": "scrypt", "params": dict(SCRYPT_WRITE), "salt": _b64(salt)},
        "cipher": {"name": "nacl/secretbox", "nonce": _b64(nonce)},
        "ciphertext": _b64(sealed),
    }
    return json.dumps(envelope, separators=(",", ":")).encode()


def decrypt(envelope: bytes, password: bytes) -> bytes:
    import nacl.exceptions
    import nacl.secret

    try:
        doc = json.loads(envelope)
        kdf, cipher = doc["kdf"], doc["cipher"]
        params = kdf["params"]
        n, r, p = int(params["N"]), int(params["r"]), int(params["p"])
        salt = base64.b64decode(kdf["salt"], validate=True)
        nonce = base64.b64decode(cipher["nonce"], validate=True)
        sealed = base64.b64decode(doc["ciphertext"], validate=True)
        kdf_name, cipher_name = kdf["name"], cipher["name"]
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise SignError("the encrypted key is not in the sigstore format") from None
    if kdf_name != "scrypt" or cipher_name != "nacl/secretbox":
        raise SignError(f"unsupported key encryption {kdf_name}/{cipher_name}")
    if (n, r, p) not in SCRYPT_ACCEPTED:
        raise SignError(f"unsupported scrypt parameters N={n} r={r} p={p}")
    if len(nonce) != NONCE_BYTES:
        raise SignError("the key's nonce is not 24 bytes")
    key = _scrypt(password, salt, n, r, p)
    try:
        return nacl.secret.SecretBox(key).decrypt(sealed, nonce)
    except nacl.exceptions.CryptoError:
        raise SignError("cannot decrypt the private key: wrong password?") from None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# -- keys ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeyPair:
    private_pem: bytes  # encrypted
    public_pem: bytes


def generate(password: bytes) -> KeyPair:
    """A new ECDSA P-256 key pair, as `cosign generate-key-pair` writes it."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    private = ec.generate_private_key(ec.SECP256R1())
    der = private.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return KeyPair(pem_encode(SIGSTORE_PEM_TYPE, encrypt(der, password)), public)


def load_private(data: bytes, password: bytes) -> Any:
    """The ECDSA private key of an encrypted cosign key file."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    if len(data) > MAX_KEY_FILE:
        raise SignError("the key file is too large to be a cosign key")
    kind, body = pem_decode(data)
    if kind not in (SIGSTORE_PEM_TYPE, COSIGN_PEM_TYPE):
        raise SignError(f"unsupported PEM type {kind!r} (want {SIGSTORE_PEM_TYPE!r})")
    der = decrypt(body, password)
    try:
        key = serialization.load_der_private_key(der, password=None)
    except (ValueError, TypeError) as e:
        raise SignError(f"the decrypted key is not PKCS #8: {e}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise SignError("only ECDSA P-256 keys are supported")
    return key


# -- signatures -------------------------------------------------------------------------------


def docker_reference(host: str, repository: str) -> str:
    """The identity cosign signs: the repository name, Docker Hub as index.docker.io."""
    registry = _DOCKER_HUB_REGISTRY if host == _DOCKER_HUB else host
    return f"{registry}/{repository}"


def payload(identity: str, manifest_digest: str) -> bytes:
    """The simple-signing payload, byte for byte as cosign marshals it."""
    doc = {
        "critical": {
            "identity": {"docker-reference": identity},
            "image": {"docker-manifest-digest": manifest_digest},
            "type": PAYLOAD_TYPE,
        },
        "optional": None,
    }
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


def sign(private_key: Any, data: bytes) -> str:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    return _b64(private_key.sign(data, ec.ECDSA(hashes.SHA256())))


def verify(public_pem: bytes, data: bytes, signature_b64: str) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = serialization.load_pem_public_key(public_pem)
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise SignError("not an ECDSA public key")
    try:
        key.verify(base64.b64decode(signature_b64), data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


@dataclass(frozen=True, slots=True)
class ImageName:
    """A reference split as docker normalizes it (enough for naming: no validation here,
    the daemon validates what it is sent)."""

    host: str
    repository: str
    tag: str | None
    digest: str | None

    @property
    def name(self) -> str:
        return f"{self.host}/{self.repository}"

    def __str__(self) -> str:
        s = self.name
        if self.tag:
            s += f":{self.tag}"
        if self.digest:
            s += f"@{self.digest}"
        return s


def split_reference(text: str) -> ImageName:
    name, _, digest = text.partition("@")
    tag = None
    colon, slash = name.rfind(":"), name.rfind("/")
    if colon > slash:
        name, tag = name[:colon], name[colon + 1 :]
    first, sep, rest = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        host, repository = first, rest
    else:
        host, repository = _DOCKER_HUB, name
    if host in (_DOCKER_HUB_REGISTRY, "registry-1.docker.io"):
        host = _DOCKER_HUB
    if host == _DOCKER_HUB and "/" not in repository:
        repository = f"library/{repository}"
    if not repository:
        raise SignError(f"{text!r} is not an image reference")
    if tag is None and not digest:
        tag = "latest"
    return ImageName(host, repository, tag, digest or None)


def attachment_tag(manifest_digest: str) -> str:
    algorithm, _, encoded = manifest_digest.partition(":")
    return f"{algorithm}-{encoded}.sig"


@dataclass(frozen=True, slots=True)
class Blob:
    media_type: str
    data: bytes

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.data).hexdigest()

    def descriptor(self, **extra: Any) -> dict[str, Any]:
        # go-containerregistry's descriptor field order: mediaType, size, digest, annotations.
        return {
            "mediaType": self.media_type,
            "size": len(self.data),
            "digest": self.digest,
            **extra,
        }


@dataclass(frozen=True, slots=True)
class SignatureImage:
    payload: Blob
    config: Blob
    manifest: Blob
    signature: str


def signature_image(payload_bytes: bytes, signature_b64: str) -> SignatureImage:
    """The manifest cosign pushes under the ``.sig`` tag: one payload layer with the signature
    annotation, and the image config go-containerregistry writes for it."""
    layer = Blob(SIGNATURE_MEDIA_TYPE, payload_bytes)
    config_doc = {
        "architecture": "",
        "created": "0001-01-01T00:00:00Z",
        "history": [{"created": "0001-01-01T00:00:00Z"}],
        "os": "",
        "rootfs": {"type": "layers", "diff_ids": [layer.digest]},
        "config": {},
    }
    config = Blob(OCI_CONFIG, json.dumps(config_doc, separators=(",", ":")).encode())
    manifest_doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config.descriptor(),
        "layers": [layer.descriptor(annotations={SIGNATURE_ANNOTATION: signature_b64})],
    }
    manifest = Blob(OCI_MANIFEST, json.dumps(manifest_doc, separators=(",", ":")).encode())
    return SignatureImage(layer, config, manifest, signature_b64)
