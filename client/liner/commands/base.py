"""What every command module shares: the global settings and the client they open, the
error type a command fails with, ctr's aliases, and the lazily imported modules."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import click

from liner.common import LinerClientError, lazy_module
from liner.errors import Unavailable
from liner.format import parse_labels

if TYPE_CHECKING:
    from liner import events as eventdocs
    from liner import images as imagedocs
    from liner import run as run_mod
    from liner.client import Client
    from liner_common import imagespec
    from liner_common import platforms as platformspec
else:
    # Each command imports what it uses when it runs: grpc and the generated code (through
    # liner.client), rich (progress), the run machinery. `liner version` and `liner --help`
    # stay fast.
    eventdocs = lazy_module("liner.events")
    imagedocs = lazy_module("liner.images")
    run_mod = lazy_module("liner.run")
    imagespec = lazy_module("liner_common.imagespec")
    platformspec = lazy_module("liner_common.platforms")

CLIENT_REVISION = "liner"


class Failure(click.ClickException):
    """A runtime failure: shown as `liner: <message>`, exit code 1."""

    exit_code = 1

    def show(self, file: Any = None) -> None:
        click.echo(f"liner: {self.message}", err=True)


def fail_item(message: str) -> None:
    """Report one failed item of a multi-item command; the command exits 1 at the end."""
    click.echo(f"liner: {message}", err=True)


class AliasGroup(click.Group):
    """A group that also answers to ctr's aliases (ns, list, remove, ...)."""

    ALIASES = {
        "ns": "namespaces",
        "namespace": "namespaces",
        "lease": "leases",
        "image": "images",
        "i": "images",
        "snapshot": "snapshots",
        "container": "containers",
        "c": "containers",
        "task": "tasks",
        "t": "tasks",
        "list": "ls",
        "remove": "rm",
        "delete": "rm",
        "del": "rm",
    }

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is None and cmd_name in self.ALIASES:
            command = super().get_command(ctx, self.ALIASES[cmd_name])
        return command

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        # Report the canonical name, so usage lines read `liner namespaces ...`.
        _, command, rest = super().resolve_command(ctx, args)
        return (command.name if command else None), command, rest


@dataclass(slots=True)
class Settings:
    """The global options; the client is made on first use, so usage errors need no daemon."""

    address: str
    namespace: str
    timeout: float
    _client: Client | None = field(default=None, init=False, repr=False)

    def client(self) -> Client:
        if self._client is None:
            from liner.client import Client

            self._client = Client(self.address, self.namespace, timeout=self.timeout or None)
            click.get_current_context().call_on_close(self._client.close)
        return self._client


def open_client() -> Client:
    return click.get_current_context().find_object(Settings).client()  # type: ignore[union-attr]


def label_args(pairs: Sequence[str], param: str) -> dict[str, str]:
    try:
        return parse_labels(pairs)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint=param) from None


def for_each(items: Sequence[str], remove: Callable[[str], object]) -> None:
    """Remove every item, echoing each one removed; one error line per failure, exit 1 at
    the end if any failed (a daemon that is down stops it at once)."""
    failed = False
    for item in items:
        try:
            remove(item)
        except Unavailable:
            raise
        except LinerClientError as e:
            fail_item(str(e))
            failed = True
        else:
            click.echo(item)
    exit_if(failed)


def exit_if(failed: bool) -> None:
    if failed:
        click.get_current_context().exit(1)
