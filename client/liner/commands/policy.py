"""`liner policy`: the daemon's signature policy (containers-policy.json(5))."""

from __future__ import annotations

from pathlib import Path

import click

from liner.commands.base import AliasGroup, Failure, open_client

MAX_POLICY_FILE = 4 << 20


@click.group(cls=AliasGroup)
def policy() -> None:
    """The signature policy linerd enforces on every image entering its store."""


@policy.command("check")
@click.argument("file", metavar="FILE", type=click.Path(dir_okay=False, path_type=Path))
def policy_check(file: Path) -> None:
    """Check a policy.json as linerd would load it and print its scopes.

    The file is read here and parsed by linerd (the parser is the daemon's, and the key files
    it names are read on linerd's host, where the policy applies)."""
    try:
        with open(file, "rb") as f:
            data = f.read(MAX_POLICY_FILE + 1)
    except OSError as e:
        raise Failure(f"{file}: {e.strerror or e}") from None
    if len(data) > MAX_POLICY_FILE:
        raise Failure(f"{file}: larger than {MAX_POLICY_FILE} bytes")
    scopes = open_client().check_policy(data, str(file))
    click.echo(f"{file}: valid")
    for line in scopes:
        click.echo(f"  {line}")
