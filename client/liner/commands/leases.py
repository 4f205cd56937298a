"""`liner leases`."""

from __future__ import annotations

from datetime import UTC, datetime

import click

from liner.commands.base import AliasGroup, for_each, label_args, open_client
from liner.format import labels_text, parse_duration, rfc3339, table
from liner_common.labels import GC_EXPIRE


@click.group(cls=AliasGroup)
def leases() -> None:
    """Manage leases."""


@leases.command("ls")
@click.option("--quiet", "-q", is_flag=True, help="print only the ids")
def leases_ls(quiet: bool) -> None:
    """List leases."""
    found = open_client().leases()
    if quiet:
        for lease in found:
            click.echo(lease.id)
        return
    rows = [
        [
            lease.id,
            rfc3339(lease.created_at) if lease.created_at else "-",
            labels_text(lease.labels),
        ]
        for lease in found
    ]
    click.echo(table(["ID", "CREATED AT", "LABELS"], rows), nl=False)


@leases.command("create")
@click.option("--id", "lease_id", default="", help="lease id (default: generated)")
@click.option(
    "--expire",
    "-x",
    default="24h",
    show_default=True,
    help="lifetime, e.g. 24h or 30m; 0 never expires",
)
@click.option("--label", "-l", "labels", multiple=True, metavar="KEY=VALUE", help="repeatable")
def leases_create(lease_id: str, expire: str, labels: tuple[str, ...]) -> None:
    """Create a lease; prints its id."""
    try:
        lifetime = parse_duration(expire)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--expire") from None
    if lifetime.total_seconds() < 0:
        raise click.BadParameter("must not be negative", param_hint="--expire")
    values = label_args(labels, "--label")
    if lifetime:
        values[GC_EXPIRE] = rfc3339(datetime.now(UTC) + lifetime)
    click.echo(open_client().create_lease(lease_id, values).id)


@leases.command("rm")
@click.option("--sync", is_flag=True, help="wait for the garbage collection to finish")
@click.argument("ids", nargs=-1, required=True, metavar="ID...")
def leases_rm(sync: bool, ids: tuple[str, ...]) -> None:
    """Remove leases."""
    client = open_client()
    for_each(ids, lambda lease_id: client.delete_lease(lease_id, sync=sync))
