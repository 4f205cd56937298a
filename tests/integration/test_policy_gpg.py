"""`linerd.policy.gpg` against messages the real gpg makes: good, foreign, doubled, inflating,
subkey-signed; and the caller's keyring is never touched."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from linerd.policy import gpg

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("gpg") is None, reason="gpg (gnupg) is not installed"),
]


@dataclass
class Keys:
    home: Path
    a: str
    b: str
    a_public: bytes
    b_public: bytes

    def sign(self, data: bytes, *signers: str) -> bytes:
        args = [arg for fpr in signers for arg in ("-u", fpr)]
        return _gpg(self.home, *args, "--sign", "--output", "-", input=data)


def _gpg(home: Path, *args: str, input: bytes | None = None) -> bytes:
    proc = subprocess.run(
        ["gpg", "--homedir", str(home), "--batch", "--no-tty", "--passphrase", "", *args],
        input=input,
        capture_output=True,
        check=True,
        timeout=60,
    )
    return proc.stdout


def _fingerprint(home: Path, uid: str) -> str:
    colons = _gpg(home, "--with-colons", "--list-keys", uid).decode()
    return next(line.split(":")[9] for line in colons.splitlines() if line.startswith("fpr:"))


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keys]:
    home = tmp_path_factory.mktemp("gpg") / "home"
    home.mkdir(mode=0o700)
    for name in ("a", "b"):
        _gpg(home, "--quick-gen-key", f"{name} <{name}@liner.test>", "ed25519", "sign", "never")
    a, b = _fingerprint(home, "a@liner.test"), _fingerprint(home, "b@liner.test")
    try:
        yield Keys(home, a, b, _gpg(home, "--export", a), _gpg(home, "--export", b))
    finally:
        subprocess.run(
            ["gpgconf", "--homedir", str(home), "--kill", "all"], capture_output=True, timeout=30
        )


def test_good_signature(keys: Keys) -> None:
    verified = gpg.verify([keys.a_public], keys.sign(b"payload", keys.a))
    assert verified.plaintext == b"payload" and verified.fingerprint == keys.a


def test_foreign_key_refused(keys: Keys) -> None:
    with pytest.raises(gpg.GPGError, match="not in the policy's keyring"):
        gpg.verify([keys.a_public], keys.sign(b"payload", keys.b))


def test_two_signatures_refused(keys: Keys) -> None:
    # gpgme (containers/image) demands exactly one signature; so does liner.
    with pytest.raises(gpg.GPGError, match="signature count 2"):
        gpg.verify([keys.a_public, keys.b_public], keys.sign(b"payload", keys.a, keys.b))


def test_inflating_payload_refused(keys: Keys) -> None:
    bomb = keys.sign(b"\0" * (16 << 20), keys.a)
    assert len(bomb) < 1 << 20
    with pytest.raises(gpg.GPGError, match="larger than"):
        gpg.verify([keys.a_public], bomb)


def test_garbage_and_no_keys(keys: Keys) -> None:
    with pytest.raises(gpg.GPGError):
        gpg.verify([keys.a_public], b"\xa3not a message")
    with pytest.raises(gpg.GPGError, match="no public keys"):
        gpg.verify([b"not a key"], keys.sign(b"payload", keys.a))


def test_subkey_signature_accepted_for_primary(keys: Keys, tmp_path: Path) -> None:
    home = tmp_path / "sub"
    shutil.copytree(keys.home, home, ignore=shutil.ignore_patterns("S.*"))
    _gpg(home, "--quick-add-key", keys.a, "ed25519", "sign", "never")
    colons = _gpg(home, "--with-colons", "--list-keys", keys.a).decode()
    subkey = [line.split(":")[9] for line in colons.splitlines() if line.startswith("fpr:")][-1]
    assert subkey != keys.a
    try:
        signed = _gpg(home, "-u", f"{subkey}!", "--sign", "--output", "-", input=b"payload")
        public = _gpg(home, "--export", keys.a)
    finally:
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], capture_output=True)
    assert gpg.verify([public], signed).fingerprint == keys.a


def test_callers_keyring_untouched(
    keys: Keys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    user_home = tmp_path / "user-gnupg"
    user_home.mkdir(mode=0o700)
    monkeypatch.setenv("GNUPGHOME", str(user_home))
    monkeypatch.setenv("HOME", str(tmp_path))
    gpg.verify([keys.a_public], keys.sign(b"payload", keys.a))
    assert list(user_home.iterdir()) == []
    assert not (tmp_path / ".gnupg").exists()
