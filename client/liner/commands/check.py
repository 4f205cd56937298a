"""`liner check`."""

from __future__ import annotations

from pathlib import Path

import click

from liner.commands.base import Failure, Settings, exit_if
from liner.format import table


@click.command("check")
@click.option(
    "--root",
    default="/var/lib/liner",
    show_default=True,
    type=click.Path(),
    help="linerd's root directory",
)
@click.option(
    "--state",
    default="/run/liner",
    show_default=True,
    type=click.Path(),
    help="linerd's state directory (for --store)",
)
@click.option(
    "--store", is_flag=True, help="check the store instead: records against files, chains, leaks"
)
@click.option("--verify", is_flag=True, help="with --store: re-hash every blob")
@click.option(
    "--repair",
    is_flag=True,
    help="with --store: remove what is provably orphaned (linerd must be stopped)",
)
@click.pass_obj
def check(
    settings: Settings, root: str, state: str, store: bool, verify: bool, repair: bool
) -> None:
    """Check the daemon, its store and database, runtimes, conmon, overlay and cgroups.

    With --store, one line per inconsistency in the store and exit status 1 if any.
    """
    if store or repair:
        _check_store(Path(root), Path(state), verify, repair)
        return
    from liner.check import run_checks

    results = run_checks(settings.address, settings.namespace, Path(root))
    rows = [(c.name, "ok" if c.ok else "FAIL", c.detail) for c in results]
    click.echo(table(["CHECK", "STATUS", "DETAIL"], rows), nl=False)
    # crun is optional: only the others make the check fail.
    exit_if(any(not c.ok for c in results if c.name != "crun"))


def _check_store(root: Path, state: Path, verify: bool, repair: bool) -> None:
    from linerd.fsck import RootBusy, check_store
    from linerd.fsck import repair as repair_store

    findings = check_store(root, state, verify=verify)
    if repair:
        try:
            fixed = repair_store(findings, root)
        except RootBusy as e:
            raise Failure(str(e)) from None
        for finding in fixed:
            click.echo(f"repaired {finding}")
        findings = check_store(root, state, verify=verify)
    for finding in findings:
        click.echo(str(finding))
    exit_if(bool(findings))
