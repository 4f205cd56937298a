"""OpenPGP verification through the `gpg` binary, in a private temporary home.

Each verification imports the requirement's keys into a fresh GNUPGHOME (never the user's
keyring), runs ``gpg --decrypt`` on the signature and reads ``--status-fd``: exactly one
signature, a VALIDSIG and a GOODSIG, nothing bad, and the signing key (or its primary key)
among the imported keys. This mirrors what containers/image asks of gpgme. Blocking: call from
a thread.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass

GPG = shutil.which("gpg") or "/usr/bin/gpg"
MAX_PLAINTEXT_BYTES = 4 << 20
TIMEOUT = 30.0
_BAD_STATUSES = ("BADSIG", "ERRSIG", "EXPSIG", "EXPKEYSIG", "REVKEYSIG", "DECRYPTION_FAILED")


class GPGError(Exception):
    """The signature is not acceptable; the message says why."""


@dataclass(frozen=True, slots=True)
class Verified:
    plaintext: bytes
    fingerprint: str


def _run(home: str, args: Sequence[str], stdin: bytes) -> subprocess.CompletedProcess[bytes]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "GNUPGHOME": home}
    try:
        return subprocess.run(
            [
                GPG,
                "--homedir",
                home,
                "--batch",
                "--no-tty",
                "--no-autostart",
                "--no-auto-key-retrieve",
                "--no-options",
                *args,
            ],
            input=stdin,
            capture_output=True,
            env=env,
            timeout=TIMEOUT,
            check=False,
        )
    except FileNotFoundError:
        raise GPGError(f"{GPG} is not installed") from None
    except subprocess.TimeoutExpired:
        raise GPGError(f"gpg did not finish within {TIMEOUT:.0f}s") from None


def _statuses(output: bytes) -> list[list[str]]:
    out = []
    for line in output.decode("utf-8", "replace").splitlines():
        if line.startswith("[GNUPG:] "):
            out.append(line[len("[GNUPG:] ") :].split())
    return out


def _import(home: str, keyring: Sequence[bytes]) -> set[str]:
    fingerprints: set[str] = set()
    for data in keyring:
        result = _run(home, ["--status-fd", "1", "--import"], data)
        for status in _statuses(result.stdout):
            if status[0] == "IMPORT_OK" and len(status) >= 3:
                fingerprints.add(status[2].upper())
    return fingerprints


def verify(keyring: Sequence[bytes], signature: bytes) -> Verified:
    """The signed plaintext of ``signature`` if one of ``keyring``'s keys made it."""
    with tempfile.TemporaryDirectory(prefix="liner-gpg-") as home:
        os.chmod(home, 0o700)
        trusted = _import(home, keyring)
        if not trusted:
            raise GPGError("no public keys could be imported from the policy's keyring")
        result = _run(
            home,
            [
                "--status-fd",
                "2",
                "--trust-model",
                "always",
                "--max-output",
                str(MAX_PLAINTEXT_BYTES),
                "--output",
                "-",
                "--decrypt",
            ],
            signature,
        )
    statuses = _statuses(result.stderr)
    names = [s[0] for s in statuses]
    declared = [s[1] for s in statuses if s[0] == "PLAINTEXT_LENGTH" and len(s) > 1]
    if len(result.stdout) >= MAX_PLAINTEXT_BYTES or any(
        d.isdigit() and int(d) >= MAX_PLAINTEXT_BYTES for d in declared
    ):
        # gpg stops at --max-output: a compressed payload that inflates past the bound.
        raise GPGError(f"signed payload larger than {MAX_PLAINTEXT_BYTES} bytes")
    for bad in _BAD_STATUSES:
        if bad in names:
            if bad == "ERRSIG" and "NO_PUBKEY" in names:
                raise GPGError("signed by a key not in the policy's keyring")
            raise GPGError(f"invalid GPG signature ({bad})")
    signatures = max(names.count("NEWSIG"), names.count("GOODSIG"), names.count("VALIDSIG"))
    if signatures != 1:
        raise GPGError(f"unexpected GPG signature count {signatures}")
    if result.returncode != 0 or "GOODSIG" not in names or "VALIDSIG" not in names:
        raise GPGError("invalid GPG signature (gpg did not report a good signature)")
    validsig = next(s for s in statuses if s[0] == "VALIDSIG")
    fingerprint = validsig[1].upper()
    primary = validsig[10].upper() if len(validsig) > 10 else fingerprint
    if fingerprint not in trusted and primary not in trusted:
        raise GPGError(f"signature by key {fingerprint} is not accepted")
    return Verified(result.stdout, primary if primary in trusted else fingerprint)
