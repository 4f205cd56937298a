"""`liner version`."""

from __future__ import annotations

import click

from liner.commands.base import CLIENT_REVISION, open_client


@click.command()
def version() -> None:
    """Show client and server versions."""
    import platform

    from liner.version import installed_version

    click.echo("Client:")
    click.echo(f"  Version:  {installed_version()}")
    click.echo(f"  Revision: {CLIENT_REVISION}")
    click.echo(f"  Python:   {platform.python_version()}")
    click.echo()
    client = open_client()
    server = client.version()
    uuid = client.server().uuid
    click.echo("Server:")
    click.echo(f"  Version:  {server.version}")
    click.echo(f"  Revision: {server.revision}")
    click.echo(f"  UUID:     {uuid}")
