"""`liner namespaces`."""

from __future__ import annotations

import click

from liner.commands.base import AliasGroup, for_each, label_args, open_client
from liner.format import labels_text, table


@click.group(cls=AliasGroup)
def namespaces() -> None:
    """Manage namespaces (alias: ns)."""


@namespaces.command("ls")
@click.option("--quiet", "-q", is_flag=True, help="print only the names")
def namespaces_ls(quiet: bool) -> None:
    """List namespaces."""
    found = open_client().namespaces()
    if quiet:
        for ns in found:
            click.echo(ns.name)
        return
    click.echo(
        table(["NAME", "LABELS"], [[ns.name, labels_text(ns.labels)] for ns in found]), nl=False
    )


@namespaces.command("create")
@click.argument("name")
@click.argument("labels", nargs=-1, metavar="[KEY=VALUE]...")
def namespaces_create(name: str, labels: tuple[str, ...]) -> None:
    """Create a namespace, optionally with labels."""
    open_client().create_namespace(name, label_args(labels, "KEY=VALUE"))


@namespaces.command("rm")
@click.argument("names", nargs=-1, required=True, metavar="NAME...")
def namespaces_rm(names: tuple[str, ...]) -> None:
    """Remove empty namespaces."""
    client = open_client()
    for_each(names, client.delete_namespace)


@namespaces.command("label")
@click.argument("name")
@click.argument("labels", nargs=-1, metavar="[KEY=VALUE]...")
def namespaces_label(name: str, labels: tuple[str, ...]) -> None:
    """Set labels on a namespace (KEY= removes KEY); with none, print its labels."""
    client = open_client()
    if not labels:
        for key, value in sorted(client.get_namespace(name).labels.items()):
            click.echo(f"{key}={value}")
        return
    client.set_namespace_labels(name, label_args(labels, "KEY=VALUE"))
