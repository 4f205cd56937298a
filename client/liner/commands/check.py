"""`liner check`."""

from __future__ import annotations

import click

from liner.commands.base import Failure, Settings, exit_if
from liner.format import table


@click.command("check")
@click.option("--store", is_flag=True, hidden=True)
@click.option("--root", hidden=True)
@click.pass_obj
def check(settings: Settings, store: bool, root: str | None) -> None:
    """Check the daemon (its store, database and overlay support, as it reports them), the
    runtimes, conmon and cgroups.

    The store's records against its files: `linerd check-store` (the daemon's own command).
    """
    if store:
        raise Failure("the store check is the daemon's command now: linerd check-store")
    if root:
        raise Failure("--root went: liner check asks linerd where its root is")
    from liner.check import run_checks

    results = run_checks(settings.address, settings.namespace)
    rows = [(c.name, "ok" if c.ok else "FAIL", c.detail) for c in results]
    click.echo(table(["CHECK", "STATUS", "DETAIL"], rows), nl=False)
    # crun is optional: only the others make the check fail.
    exit_if(any(not c.ok for c in results if c.name != "crun"))
