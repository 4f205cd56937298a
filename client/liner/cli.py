"""`liner`: ctr-style nouns and verbs over linerd's API, one module per noun in
liner.commands (as ctr lays out its commands).

Every failure ends as one `liner: <message>` line on stderr and exit code 1; usage errors exit 2.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Sequence
from typing import Any, NoReturn

import click

from liner.commands.base import AliasGroup, Failure, Settings
from liner.common import DEFAULT_ADDRESS, LinerClientError, RunError


class LinerGroup(AliasGroup):
    """The top-level group: the one place client errors become `liner: ...` lines."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (LinerClientError, RunError) as e:
            raise Failure(str(e)) from None


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    """--version: as click.version_option prints it, with the version looked up only here."""
    if not value or ctx.resilient_parsing:
        return
    from liner.version import installed_version

    click.echo(f"liner, version {installed_version()}")
    ctx.exit()


@click.group("liner", cls=LinerGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--address",
    "-a",
    envvar="LINER_ADDRESS",
    default=DEFAULT_ADDRESS,
    show_default=True,
    show_envvar=True,
    help="linerd's socket",
)
@click.option(
    "--namespace",
    "-n",
    envvar="LINER_NAMESPACE",
    default="default",
    show_default=True,
    show_envvar=True,
    help="namespace to work in",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=0,
    help="seconds each call may take; 0 = no limit",
)
@click.option(
    "--version",
    "-v",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_print_version,
    help="Show the version and exit.",
)
@click.pass_context
def cli(ctx: click.Context, address: str, namespace: str, timeout: float) -> None:
    """Command line client for linerd."""
    ctx.obj = Settings(address=address, namespace=namespace, timeout=timeout)


def _register() -> None:
    from liner.commands import (
        check,
        containers,
        content,
        events,
        images,
        keys,
        leases,
        logs,
        namespaces,
        policy,
        run,
        snapshots,
        tasks,
        version,
    )

    for command in (
        version.version,
        namespaces.namespaces,
        content.content,
        leases.leases,
        images.images,
        keys.keys,
        policy.policy,
        snapshots.snapshots,
        run.run_command,
        containers.containers,
        tasks.tasks,
        events.events,
        logs.logs,
        check.check,
    ):
        cli.add_command(command)


_register()


# -- entry point ----------------------------------------------------------------------------


def _quiet_stdout() -> None:
    """After a broken pipe, point stdout at /dev/null so the exit-time flush is silent."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Run the CLI, never letting a traceback out; exits with sys.exit (see console_main)."""
    try:
        code = cli.main(
            args=list(argv) if argv is not None else None, prog_name="liner", standalone_mode=False
        )
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        click.echo("liner: interrupted", err=True)
        sys.exit(130)
    except BrokenPipeError:
        _quiet_stdout()
        sys.exit(1)
    except Exception as e:
        click.echo(f"liner: internal error: {type(e).__name__}: {e}", err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


def console_main() -> NoReturn:
    """The `liner` executable: `main`, then an exit without interpreter teardown.

    Tearing down an interpreter that has grpc and protobuf loaded costs ~100 ms of CPU after
    the last line is written (no system calls in it: finalization proper), a third of a short
    command. Once the output is flushed and the exit callbacks have run nothing is left to do,
    so the process ends with os._exit and the same code. `main` keeps the ordinary exit for
    callers that run it in-process.
    """
    try:
        main()
    except SystemExit as e:
        _fast_exit(e)


def _fast_exit(e: SystemExit) -> NoReturn:
    if not isinstance(e.code, int | None) or any(
        t.is_alive() and not t.daemon and t is not threading.main_thread()
        for t in threading.enumerate()
    ):
        # A message to print, or threads the interpreter would wait for: the ordinary way.
        raise e
    code = e.code or 0
    import atexit

    atexit._run_exitfuncs()  # what finalization would run first (grpc's and logging's hooks)
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        code = 1  # the reader went away: quietly and with 1, as in main
    except (OSError, ValueError):
        code = 120  # what the interpreter exits with when its final flush fails
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    console_main()
