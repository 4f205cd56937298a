"""`liner snapshots`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from liner.commands.base import AliasGroup, for_each, imagedocs, open_client
from liner.errors import NotFound
from liner.format import human_size, snapshot_tree, table

if TYPE_CHECKING:
    from liner import images as imagedocs
    from liner.client import SnapshotInfo


_SNAPSHOTTER = "liner.snapshotter"


@click.group(cls=AliasGroup)
@click.option(
    "--snapshotter",
    "-s",
    envvar="LINER_SNAPSHOTTER",
    default="overlayfs",
    show_default=True,
    show_envvar=True,
    help="snapshotter to work with",
)
@click.pass_context
def snapshots(ctx: click.Context, snapshotter: str) -> None:
    """Manage snapshots (alias: snapshot)."""
    ctx.meta[_SNAPSHOTTER] = snapshotter


def _snapshotter() -> str:
    return str(click.get_current_context().meta[_SNAPSHOTTER])


_KIND_NAMES = {"committed": "Committed", "active": "Active", "view": "View"}


def _kind(info: SnapshotInfo) -> str:
    return _KIND_NAMES.get(info.kind, "Unknown")


@snapshots.command("ls")
@click.option("--quiet", "-q", is_flag=True, help="print only the keys")
@click.argument("filters", nargs=-1, metavar="[FILTER]...")
def snapshots_ls(quiet: bool, filters: tuple[str, ...]) -> None:
    """List snapshots."""
    found = sorted(open_client().snapshots(_snapshotter(), filters), key=lambda i: i.name)
    if quiet:
        for info in found:
            click.echo(info.name)
        return
    rows = [[info.name, info.parent or "-", _kind(info)] for info in found]
    click.echo(table(["KEY", "PARENT", "KIND"], rows), nl=False)


@snapshots.command("rm")
@click.argument("keys", nargs=-1, required=True, metavar="KEY...")
def snapshots_rm(keys: tuple[str, ...]) -> None:
    """Remove snapshots (children first: a snapshot with children is refused)."""
    client = open_client()
    snapshotter = _snapshotter()
    for_each(keys, lambda key: client.remove_snapshot(snapshotter, key))


@snapshots.command("usage")
@click.option("--bytes", "-b", "in_bytes", is_flag=True, help="sizes in bytes")
@click.argument("key", required=False)
def snapshots_usage(in_bytes: bool, key: str | None) -> None:
    """Disk usage of one snapshot, or of each."""
    client = open_client()
    snapshotter = _snapshotter()
    keys = [key] if key else sorted(i.name for i in client.snapshots(snapshotter))
    rows = []
    for k in keys:
        try:
            usage = client.snapshot_usage(snapshotter, k)
        except NotFound:
            if key:
                raise
            continue  # removed since it was listed
        size = str(usage.size) if in_bytes else human_size(usage.size)
        rows.append([k, size, str(usage.inodes)])
    click.echo(table(["KEY", "SIZE", "INODES"], rows), nl=False)


@snapshots.command("tree")
def snapshots_tree() -> None:
    """Show snapshots as a tree of parents and children."""
    found = open_client().snapshots(_snapshotter())
    click.echo(snapshot_tree([(i.name, i.parent) for i in found]), nl=False)


@snapshots.command("info")
@click.argument("key")
def snapshots_info(key: str) -> None:
    """Print a snapshot's information as JSON (as ctr does)."""
    import json

    info = open_client().stat_snapshot(_snapshotter(), key)
    doc: dict[str, Any] = {"Kind": _kind(info), "Name": info.name}
    if info.parent:
        doc["Parent"] = info.parent
    if info.labels:
        doc["Labels"] = dict(sorted(info.labels.items()))
    doc["Created"] = imagedocs.json_time(info.created_at)
    doc["Updated"] = imagedocs.json_time(info.updated_at)
    click.echo(json.dumps(doc, indent=2))
