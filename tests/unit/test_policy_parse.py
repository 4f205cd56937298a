"""containers-policy.json parsing: every requirement and identity kind, scope precedence,
and bad files refused with one line naming the file."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from linerd import errdefs
from linerd.policy import PolicyError, load_policy, parse_policy
from linerd.policy.identity import (
    ExactReference,
    ExactRepository,
    MatchExact,
    MatchRepoDigestOrExact,
    MatchRepository,
    RemapIdentity,
)
from linerd.policy.refs import from_pulled, scope_candidates
from linerd.policy.requirements import InsecureAcceptAnything, Reject, SignedBy, SigstoreSigned

pytestmark = pytest.mark.unit

DATA = Path(__file__).parent.parent / "data" / "cosign"
PUB = DATA / "cosign.pub"


def _policy(reqs: list[dict[str, Any]]) -> bytes:
    return json.dumps({"default": reqs}).encode()


def _one(req: dict[str, Any]) -> Any:
    return parse_policy(_policy([req])).default[0]


def test_simple_requirements() -> None:
    assert _one({"type": "insecureAcceptAnything"}) == InsecureAcceptAnything()
    assert _one({"type": "reject"}) == Reject()


def test_signed_by_key_sources(tmp_path: Path) -> None:
    a, b = tmp_path / "a.gpg", tmp_path / "b.gpg"
    a.write_bytes(b"key-a")
    b.write_bytes(b"key-b")
    by_path = _one({"type": "signedBy", "keyType": "GPGKeys", "keyPath": str(a)})
    assert isinstance(by_path, SignedBy) and by_path.keyring == (b"key-a",)
    assert by_path.identity == MatchRepoDigestOrExact()
    by_paths = _one({"type": "signedBy", "keyType": "GPGKeys", "keyPaths": [str(a), str(b)]})
    assert by_paths.keyring == (b"key-a", b"key-b")
    by_data = _one(
        {"type": "signedBy", "keyType": "GPGKeys", "keyData": base64.b64encode(b"k").decode()}
    )
    assert by_data.keyring == (b"k",)
    assert "signedBy" in by_path.describe() and str(a) in by_path.describe()


def test_sigstore_signed_key_sources() -> None:
    by_path = _one({"type": "sigstoreSigned", "keyPath": str(PUB)})
    assert isinstance(by_path, SigstoreSigned)
    assert isinstance(by_path.public_key, ec.EllipticCurvePublicKey)
    by_data = _one(
        {"type": "sigstoreSigned", "keyData": base64.b64encode(PUB.read_bytes()).decode()}
    )
    assert by_data.public_key.public_numbers() == by_path.public_key.public_numbers()


@pytest.mark.parametrize(
    ("identity", "expected"),
    [
        ({"type": "matchExact"}, MatchExact()),
        ({"type": "matchRepoDigestOrExact"}, MatchRepoDigestOrExact()),
        ({"type": "matchRepository"}, MatchRepository()),
        (
            {"type": "exactReference", "dockerReference": "example.com/a/b:1"},
            ExactReference("example.com/a/b:1"),
        ),
        (
            {"type": "exactRepository", "dockerRepository": "example.com/a/b"},
            ExactRepository("example.com/a/b"),
        ),
        (
            {"type": "remapIdentity", "prefix": "mirror:5000/v", "signedPrefix": "vendor.example"},
            RemapIdentity("mirror:5000/v", "vendor.example"),
        ),
    ],
)
def test_every_identity_kind(identity: dict[str, str], expected: object) -> None:
    for req in (
        {"type": "signedBy", "keyType": "GPGKeys", "keyData": "a2V5"},
        {"type": "sigstoreSigned", "keyPath": str(PUB)},
    ):
        assert _one({**req, "signedIdentity": identity}).identity == expected


def _write(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "policy.json"
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def _rsa_pem(tmp_path: Path) -> str:
    key = rsa.generate_private_key(65537, 2048).public_key()
    path = tmp_path / "rsa.pub"
    path.write_bytes(
        key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return str(path)


BAD: list[tuple[str, Any, str]] = [
    ("not json", "{", "invalid JSON"),
    ("not an object", "[]", "not a JSON object"),
    ("duplicate", '{"default": [{"type": "reject"}], "default": []}', "duplicate key"),
    ("no default", {"transports": {}}, '"default" policy is missing'),
    ("empty default", {"default": []}, "must not be empty"),
    ("unknown top", {"default": [{"type": "reject"}], "x": 1}, "unknown top-level field"),
    ("unknown type", {"default": [{"type": "bogus"}]}, "unknown policy requirement type"),
    ("no type", {"default": [{}]}, 'no "type"'),
    ("extra field", {"default": [{"type": "reject", "x": 1}]}, "unknown field 'x'"),
    (
        "unknown transport",
        {"default": [{"type": "reject"}], "transports": {"ftp": {}}},
        "unknown transport 'ftp'",
    ),
    (
        "two key sources",
        {"default": [{"type": "signedBy", "keyType": "GPGKeys", "keyPath": "/k", "keyData": "a"}]},
        "exactly one of",
    ),
    ("no key type", {"default": [{"type": "signedBy", "keyData": "a2V5"}]}, "keyType"),
    (
        "x509 key type",
        {"default": [{"type": "signedBy", "keyType": "X509Certificates", "keyData": "a2V5"}]},
        "not supported",
    ),
    (
        "missing key file",
        {"default": [{"type": "signedBy", "keyType": "GPGKeys", "keyPath": "/nonexistent/k"}]},
        "/nonexistent/k",
    ),
    (
        "relative key path",
        {"default": [{"type": "signedBy", "keyType": "GPGKeys", "keyPath": "k.gpg"}]},
        "absolute",
    ),
    (
        "bad base64",
        {"default": [{"type": "signedBy", "keyType": "GPGKeys", "keyData": "!!"}]},
        "base64",
    ),
    (
        "not pem",
        {"default": [{"type": "sigstoreSigned", "keyData": "a2V5"}]},
        "not a PEM public key",
    ),
    (
        "fulcio",
        {"default": [{"type": "sigstoreSigned", "keyPath": str(PUB), "fulcio": {}}]},
        "'fulcio' is not supported",
    ),
    (
        "bad identity",
        {
            "default": [
                {"type": "sigstoreSigned", "keyPath": str(PUB), "signedIdentity": {"type": "x"}}
            ]
        },
        "unknown signedIdentity type",
    ),
    (
        "name-only exactReference",
        {
            "default": [
                {
                    "type": "sigstoreSigned",
                    "keyPath": str(PUB),
                    "signedIdentity": {"type": "exactReference", "dockerReference": "a.io/b"},
                }
            ]
        },
        "neither a tag nor a digest",
    ),
    (
        "bad remap prefix",
        {
            "default": [
                {
                    "type": "sigstoreSigned",
                    "keyPath": str(PUB),
                    "signedIdentity": {
                        "type": "remapIdentity",
                        "prefix": "a.io/b:tag",
                        "signedPrefix": "c.io",
                    },
                }
            ]
        },
        "remapIdentity prefix",
    ),
    ("deep", '{"default": ' + "[" * 100 + "]" * 100 + "}", "nested deeper"),
]


@pytest.mark.parametrize(("doc", "problem"), [(b[1], b[2]) for b in BAD], ids=[b[0] for b in BAD])
def test_bad_files_refused_with_one_line(tmp_path: Path, doc: Any, problem: str) -> None:
    path = _write(tmp_path, doc if isinstance(doc, str) else json.dumps(doc))
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    message = str(info.value)
    assert isinstance(info.value, errdefs.InvalidArgument)
    assert message.startswith(f"{path}: ") and "\n" not in message
    assert problem in message


def test_non_ecdsa_key_refused(tmp_path: Path) -> None:
    doc = {"default": [{"type": "sigstoreSigned", "keyPath": _rsa_pem(tmp_path)}]}
    with pytest.raises(PolicyError, match="not an ECDSA public key"):
        load_policy(_write(tmp_path, json.dumps(doc)))


def test_missing_file() -> None:
    with pytest.raises(PolicyError, match=r"/nonexistent/policy\.json: cannot read"):
        load_policy("/nonexistent/policy.json")


def test_scope_candidates_order() -> None:
    ref = from_pulled("registry.example.com:5000/ns/sub/app:v1")
    assert scope_candidates(ref) == [
        "registry.example.com:5000/ns/sub/app:v1",
        "registry.example.com:5000/ns/sub/app",
        "registry.example.com:5000/ns/sub",
        "registry.example.com:5000/ns",
        "registry.example.com:5000",
        "*.example.com",
        "*.com",
    ]
    digest = "sha256:" + "a" * 64
    assert scope_candidates(from_pulled(f"busybox@{digest}"))[:3] == [
        f"docker.io/library/busybox@{digest}",
        "docker.io/library/busybox",
        "docker.io/library",
    ]
    # A reference with both is pulled (and identified) by its digest.
    assert str(from_pulled(f"busybox:1@{digest}")) == f"docker.io/library/busybox@{digest}"


def test_most_specific_scope_wins() -> None:
    labels = [
        "a.example.com/ns/app:v1",
        "a.example.com/ns/app",
        "a.example.com/ns",
        "a.example.com",
        "*.example.com",
        "*.com",
    ]
    scopes = {label: [{"type": "reject"}] for label in labels}
    doc = {
        "default": [{"type": "insecureAcceptAnything"}],
        "transports": {"docker": {**scopes, "": [{"type": "reject"}]}},
    }
    ref = from_pulled("a.example.com/ns/app:v1")
    for label in labels:
        policy = parse_policy(json.dumps(doc).encode())
        scope, _ = policy.requirements_for(ref)
        assert scope == f'docker scope "{label}"'
        del doc["transports"]["docker"][label]  # type: ignore[index]
    policy = parse_policy(json.dumps(doc).encode())
    assert policy.requirements_for(ref)[0] == 'docker transport default ""'
    del doc["transports"]["docker"][""]  # type: ignore[index]
    policy = parse_policy(json.dumps(doc).encode())
    assert policy.requirements_for(ref) == ("default", (InsecureAcceptAnything(),))


def test_other_transports_are_checked_but_kept_aside() -> None:
    doc = {
        "default": [{"type": "reject"}],
        "transports": {"dir": {"": [{"type": "insecureAcceptAnything"}]}},
    }
    policy = parse_policy(json.dumps(doc).encode())
    assert policy.requirements_for(from_pulled("busybox"))[0] == "default"
    assert "dir" in policy.other_transports


def test_load_evaluator(tmp_path: Path) -> None:
    from linerd.policy import load_evaluator_sync

    assert load_evaluator_sync("", str(tmp_path), 1) is None
    path = _write(tmp_path, json.dumps({"default": [{"type": "reject"}]}))
    evaluator = load_evaluator_sync(str(path), str(tmp_path / "no-registries.d"), 7)
    assert evaluator is not None and evaluator.generation == 7
    with pytest.raises(PolicyError):
        load_evaluator_sync(str(_write(tmp_path, "{")), "", 8)
