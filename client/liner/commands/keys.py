"""`liner keys`: signing keys in cosign's format."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from liner.commands.base import AliasGroup, Failure

PASSWORD_ENV = "COSIGN_PASSWORD"


@click.group(cls=AliasGroup)
def keys() -> None:
    """Signing keys, as cosign writes and reads them."""


def password(*, confirm: bool) -> bytes:
    """The key's password: $COSIGN_PASSWORD (empty allowed, as cosign allows it), else asked
    on the terminal."""
    value = os.environ.get(PASSWORD_ENV)
    if value is not None:
        return value.encode()
    if not sys.stdin.isatty():
        raise Failure(f"no password: set {PASSWORD_ENV} or run on a terminal")
    prompt = "Enter password for private key"
    entered = click.prompt(
        prompt,
        hide_input=True,
        confirmation_prompt="Enter password for private key again" if confirm else False,
        default="",
        show_default=False,
        err=True,
    )
    return str(entered).encode()


def _write(path: Path, data: bytes, mode: int, force: bool) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | (os.O_TRUNC if force else os.O_EXCL)
    try:
        fd = os.open(path, flags, mode)
    except FileExistsError:
        raise Failure(f"{path}: already exists (--force replaces it)") from None
    except OSError as e:
        raise Failure(f"{path}: {e.strerror or e}") from None
    with os.fdopen(fd, "wb") as f:
        f.write(data)


@keys.command("generate")
@click.option("--force", is_flag=True, help="replace cosign.key and cosign.pub if they exist")
@click.argument("directory", metavar="DIR", type=click.Path(file_okay=False, path_type=Path))
def keys_generate(force: bool, directory: Path) -> None:
    """Write a new ECDSA P-256 key pair into DIR: cosign.key (encrypted with the password from
    $COSIGN_PASSWORD or the terminal, cosign's format) and cosign.pub (PEM)."""
    from liner import cosign

    try:
        cosign.require()
        secret = password(confirm=True)
        pair = cosign.generate(secret)
    except cosign.SignError as e:
        raise Failure(str(e)) from None
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise Failure(f"{directory}: {e.strerror or e}") from None
    _write(directory / "cosign.key", pair.private_pem, 0o600, force)
    _write(directory / "cosign.pub", pair.public_pem, 0o644, force)
    click.echo(f"Private key written to {directory / 'cosign.key'}")
    click.echo(f"Public key written to {directory / 'cosign.pub'}")
