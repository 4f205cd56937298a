"""liner's policy verdict against skopeo's, on simple signing nobody here wrote.

Debian's skopeo signs busybox images with ``--sign-by`` (GPG keys generated here, signatures in
a file:// lookaside named by a registries.d written here) while pushing them to the real
docker-registry. For each case of the matrix, the same policy.json and registries.d go to
skopeo (``skopeo copy --policy``: exit 0 means accepted) and to `linerd.policy.Evaluator`:
the two verdicts must be equal.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from imagebuild import BusyboxLayout
from registry import SKOPEO, Registry

from linerd.policy import Evaluator, load_dir, parse_policy

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("gpg") is None, reason="gpg (gnupg) is not installed"),
    pytest.mark.skipif(not os.path.exists(SKOPEO), reason="skopeo is not installed"),
]


@dataclass
class Key:
    home: Path
    fingerprint: str
    public: Path


def _gpg(home: Path, *args: str, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["gpg", "--homedir", str(home), "--batch", "--no-tty", *args],
        input=input,
        capture_output=True,
        check=True,
        timeout=60,
    )


def _make_key(home: Path, name: str) -> Key:
    home.mkdir(mode=0o700)
    _gpg(
        home,
        "--passphrase",
        "",
        "--quick-gen-key",
        f"{name} <{name}@liner.test>",
        "ed25519",
        "sign",
        "never",
    )
    colons = _gpg(home, "--with-colons", "--list-keys").stdout.decode()
    fingerprint = next(
        line.split(":")[9] for line in colons.splitlines() if line.startswith("fpr:")
    )
    public = home.parent / f"{name}.gpg"
    public.write_bytes(_gpg(home, "--export", fingerprint).stdout)
    return Key(home, fingerprint, public)


@dataclass
class World:
    reg: Registry
    layout: BusyboxLayout
    right: Key
    other: Key
    lookaside: Path
    registries_d: Path
    tmp: Path

    def push(self, repo: str, *, tag: str = "latest", key: Key | None = None) -> str:
        """Push the layout's ``tag`` image as ``<host>/<repo>``, signed by ``key`` if given."""
        cmd = [
            SKOPEO,
            "--insecure-policy",
            "--registries.d",
            str(self.registries_d),
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            "--preserve-digests",
        ]
        env = dict(os.environ, HOME=str(self.tmp))
        if key is not None:
            cmd += ["--sign-by", key.fingerprint]
            env["GNUPGHOME"] = str(key.home)
        cmd += [f"oci:{self.layout.path}:{tag}", f"docker://{self.reg.host}/{repo}"]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
        assert proc.returncode == 0, proc.stderr
        return self.reg.manifest_digest(repo)

    def sig_dir(self, repo: str, digest: str) -> Path:
        """Where the lookaside keeps signatures of ``repo`` (path without host) at ``digest``."""
        path = repo.rsplit(":", 1)[0]
        algorithm, encoded = digest.split(":")
        return self.lookaside / f"{path}@{algorithm}={encoded}"


@pytest.fixture(scope="module")
def world(
    registry: Registry, busybox_layout: BusyboxLayout, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("policy-skopeo")
    keys = tmp / "keys"
    keys.mkdir()
    right = _make_key(keys / "right-home", "right")
    other = _make_key(keys / "other-home", "other")
    lookaside = tmp / "lookaside"
    lookaside.mkdir()
    registries_d = tmp / "registries.d"
    registries_d.mkdir()
    (registries_d / "liner-test.yaml").write_text(
        f'docker:\n  "{registry.host}":\n    lookaside: file://{lookaside}\n'
    )
    try:
        yield World(registry, busybox_layout, right, other, lookaside, registries_d, tmp)
    finally:
        for key in (right, other):
            subprocess.run(
                ["gpgconf", "--homedir", str(key.home), "--kill", "all"],
                capture_output=True,
                check=False,
                timeout=30,
            )


def _signed_by(key: Key, identity: dict[str, str] | None = None) -> dict[str, Any]:
    req: dict[str, Any] = {"type": "signedBy", "keyType": "GPGKeys", "keyPath": str(key.public)}
    if identity is not None:
        req["signedIdentity"] = identity
    return req


def _verdicts(
    world: World, policy: dict[str, Any], ref: str, digest: str
) -> tuple[bool, bool, str]:
    """(skopeo accepted, liner accepted, liner's message) for ``ref`` under ``policy``."""
    policy_path = world.tmp / "policy.json"
    policy_path.write_text(json.dumps(policy))
    dest = world.tmp / "copy-dest"
    shutil.rmtree(dest, ignore_errors=True)
    proc = subprocess.run(
        [
            SKOPEO,
            "--policy",
            str(policy_path),
            "--registries.d",
            str(world.registries_d),
            "copy",
            "--quiet",
            "--src-tls-verify=false",
            f"docker://{ref}",
            f"dir:{dest}",
        ],
        capture_output=True,
        text=True,
        env=dict(os.environ, HOME=str(world.tmp)),
        timeout=120,
    )
    skopeo_accepted = proc.returncode == 0
    if not skopeo_accepted:
        # Only a policy refusal counts as skopeo's verdict, not an unrelated failure.
        assert (
            "rejected" in proc.stderr or "not accepted" in proc.stderr or "signature" in proc.stderr
        ), proc.stderr
    evaluator = Evaluator(
        parse_policy(policy_path.read_bytes(), str(policy_path)), load_dir(world.registries_d)
    )
    verdict = asyncio.run(evaluator.evaluate(ref, digest))
    return skopeo_accepted, verdict.accepted, verdict.message


def _docker(
    world: World, scopes: dict[str, list[dict[str, Any]]], default: str = "reject"
) -> dict[str, Any]:
    return {"default": [{"type": default}], "transports": {"docker": scopes}}


def _agree(world: World, policy: dict[str, Any], ref: str, digest: str, expected: bool) -> None:
    skopeo, liner, message = _verdicts(world, policy, ref, digest)
    assert skopeo == liner, f"skopeo accepted={skopeo}, liner: {message}"
    assert liner == expected, message


def test_unsigned_right_key_other_key(world: World) -> None:
    host = world.reg.host
    unsigned = world.push("pol/unsigned:v1")
    signed = world.push("pol/signed:v1", key=world.right)
    by_other = world.push("pol/otherkey:v1", key=world.other)
    policy = _docker(world, {host: [_signed_by(world.right)]})
    _agree(world, policy, f"{host}/pol/unsigned:v1", unsigned, False)
    _agree(world, policy, f"{host}/pol/signed:v1", signed, True)
    _agree(world, policy, f"{host}/pol/otherkey:v1", by_other, False)
    # Pulled by digest: matchRepoDigestOrExact accepts the tag's signature in the repository.
    _agree(world, policy, f"{host}/pol/signed@{signed}", signed, True)


def test_signature_for_another_digest(world: World) -> None:
    host = world.reg.host
    digest = world.push("pol/otherdigest:v1")
    other_digest = world.push("pol/otherdigest:zstd", tag="zstd", key=world.right)
    assert digest != other_digest
    target = world.sig_dir("pol/otherdigest", digest)
    target.mkdir(parents=True)
    shutil.copy(
        world.sig_dir("pol/otherdigest", other_digest) / "signature-1", target / "signature-1"
    )
    policy = _docker(world, {host: [_signed_by(world.right)]})
    _agree(world, policy, f"{host}/pol/otherdigest:v1", digest, False)


@pytest.mark.parametrize(
    ("identity", "expected"),
    [
        (None, False),
        ({"type": "matchRepoDigestOrExact"}, False),
        ({"type": "matchExact"}, False),
        ({"type": "matchRepository"}, False),
        ({"type": "exactReference", "dockerReference": "HOST/pol/original:v1"}, True),
        ({"type": "exactReference", "dockerReference": "HOST/pol/original:v2"}, False),
        ({"type": "exactRepository", "dockerRepository": "HOST/pol/original"}, True),
        ({"type": "exactRepository", "dockerRepository": "HOST/pol/elsewhere"}, False),
        (
            {
                "type": "remapIdentity",
                "prefix": "HOST/pol/renamed",
                "signedPrefix": "HOST/pol/original",
            },
            True,
        ),
        ({"type": "remapIdentity", "prefix": "HOST/pol", "signedPrefix": "HOST/elsewhere"}, False),
    ],
)
def test_signature_naming_another_repository(
    world: World, identity: dict[str, str] | None, expected: bool
) -> None:
    host = world.reg.host
    renamed = f"pol/renamed-{abs(hash(json.dumps(identity))) % 10**8}"
    digest = world.push(f"{renamed}:v1")
    original = world.push("pol/original:v1", key=world.right)
    assert original == digest  # the same image, signed under another name
    target = world.sig_dir(renamed, digest)
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy(world.sig_dir("pol/original", digest) / "signature-1", target / "signature-1")
    if identity is not None:
        identity = {k: v.replace("HOST", host) for k, v in identity.items()}
        if identity.get("type") == "remapIdentity" and identity["prefix"].endswith("renamed"):
            identity["prefix"] = f"{host}/{renamed}"
    policy = _docker(world, {host: [_signed_by(world.right, identity)]})
    _agree(world, policy, f"{host}/{renamed}:v1", digest, expected)


def test_other_tag_same_repository(world: World) -> None:
    host = world.reg.host
    digest = world.push("pol/tags:v1", key=world.right)
    world.push("pol/tags:v2")  # same image, the v1 signature lies at the same lookaside path
    exact = _docker(world, {host: [_signed_by(world.right)]})
    repository = _docker(world, {host: [_signed_by(world.right, {"type": "matchRepository"})]})
    _agree(world, exact, f"{host}/pol/tags:v2", digest, False)
    _agree(world, repository, f"{host}/pol/tags:v2", digest, True)


def test_several_signatures_one_valid(world: World) -> None:
    host = world.reg.host
    digest = world.push("pol/multi:v1", key=world.right)
    sigs = world.sig_dir("pol/multi", digest)
    valid = (sigs / "signature-1").read_bytes()
    # skopeo rewrites the signatures on each copy: signature-1 by the other key, then the
    # right one as signature-2.
    assert world.push("pol/multi:v1", key=world.other) == digest
    (sigs / "signature-2").write_bytes(valid)
    policy = _docker(world, {host: [_signed_by(world.right)]})
    _agree(world, policy, f"{host}/pol/multi:v1", digest, True)
    # Each signing requirement needs its own accepted signature; all requirements must hold.
    both_keys = _docker(world, {host: [_signed_by(world.other), _signed_by(world.right)]})
    _agree(world, both_keys, f"{host}/pol/multi:v1", digest, True)
    and_reject = _docker(world, {host: [_signed_by(world.right), {"type": "reject"}]})
    _agree(world, and_reject, f"{host}/pol/multi:v1", digest, False)
    (sigs / "signature-2").unlink()
    _agree(world, policy, f"{host}/pol/multi:v1", digest, False)
    # A signature in no known format fails the image even next to a valid one.
    (sigs / "signature-1").write_bytes(b"garbage, not OpenPGP")
    (sigs / "signature-2").write_bytes(valid)
    _agree(world, policy, f"{host}/pol/multi:v1", digest, False)
    # An oversized signature is refused, not read whole. Here liner is deliberately stricter
    # than skopeo 1.9.3, which reads a file:// lookaside without a size limit (only its HTTP
    # reads are bounded) and then accepts signature-2.
    (sigs / "signature-1").write_bytes(b"\xa3" + b"\0" * (5 << 20))
    _skopeo, liner, message = _verdicts(world, policy, f"{host}/pol/multi:v1", digest)
    assert not liner and "larger than" in message, message


def test_default_reject_with_a_scope_that_accepts(world: World) -> None:
    host = world.reg.host
    signed = world.push("pol/scoped:v1", key=world.right)
    unsigned = world.push("pol/open/thing:v1")
    policy = _docker(
        world,
        {
            f"{host}/pol/scoped": [_signed_by(world.right)],
            f"{host}/pol/open": [{"type": "insecureAcceptAnything"}],
        },
    )
    _agree(world, policy, f"{host}/pol/scoped:v1", signed, True)
    _agree(world, policy, f"{host}/pol/open/thing:v1", unsigned, True)
    world.push("pol/elsewhere:v1", key=world.right)
    _agree(world, policy, f"{host}/pol/elsewhere:v1", signed, False)
    # The most specific scope wins: a reject for the exact tag beats the repository's accept.
    tag_reject = _docker(
        world,
        {
            f"{host}/pol/scoped": [{"type": "insecureAcceptAnything"}],
            f"{host}/pol/scoped:v1": [{"type": "reject"}],
        },
        default="insecureAcceptAnything",
    )
    _agree(world, tag_reject, f"{host}/pol/scoped:v1", signed, False)
