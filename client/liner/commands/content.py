"""`liner content`."""

from __future__ import annotations

from datetime import UTC, datetime

import click

from liner.commands.base import AliasGroup, for_each, label_args, open_client
from liner.format import age, human_size, labels_text, table


@click.group(cls=AliasGroup)
def content() -> None:
    """Manage content (blobs)."""


@content.command("ls")
@click.option("--quiet", "-q", is_flag=True, help="print only the digests")
def content_ls(quiet: bool) -> None:
    """List content."""
    found = open_client().content()
    if quiet:
        for info in found:
            click.echo(info.digest)
        return
    now = datetime.now(UTC)
    rows = [
        [info.digest, human_size(info.size), age(info.created_at, now), labels_text(info.labels)]
        for info in found
    ]
    click.echo(table(["DIGEST", "SIZE", "AGE", "LABELS"], rows), nl=False)


@content.command("get")
@click.argument("digest")
def content_get(digest: str) -> None:
    """Write a blob to stdout."""
    out = click.open_file("-", "wb")
    for chunk in open_client().read(digest):
        out.write(chunk)
    out.flush()


@content.command("rm")
@click.argument("digests", nargs=-1, required=True, metavar="DIGEST...")
def content_rm(digests: tuple[str, ...]) -> None:
    """Remove content from the namespace."""
    client = open_client()
    for_each(digests, client.delete_content)


@content.command("ingest")
@click.argument("ref")
@click.option("--expected-size", type=click.IntRange(min=0), default=0, help="size in bytes")
@click.option("--expected-digest", default="", help="sha256:<hex> the data must have")
@click.option("--label", "-l", "labels", multiple=True, metavar="KEY=VALUE", help="repeatable")
def content_ingest(
    ref: str, expected_size: int, expected_digest: str, labels: tuple[str, ...]
) -> None:
    """Store stdin as a blob under an ingest REF; prints its digest.

    Content nothing references is garbage collected; label it containerd.io/gc.root=<time> to
    keep it.
    """
    digest = open_client().write(
        ref,
        click.open_file("-", "rb"),
        total=expected_size,
        expected=expected_digest,
        labels=label_args(labels, "--label"),
    )
    click.echo(digest)


@content.command("active")
@click.option("--quiet", "-q", is_flag=True, help="print only the refs")
def content_active(quiet: bool) -> None:
    """List ingests in progress."""
    found = open_client().ingests()
    if quiet:
        for status in found:
            click.echo(status.ref)
        return
    now = datetime.now(UTC)
    rows = [[s.ref, human_size(s.offset), age(s.started_at, now)] for s in found]
    click.echo(table(["REF", "SIZE", "AGE"], rows), nl=False)
