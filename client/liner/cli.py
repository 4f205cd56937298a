"""`liner`: ctr-style nouns and verbs over linerd's API.

Every failure ends as one `liner: <message>` line on stderr and exit code 1; usage errors exit 2.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import click

from liner import images as imagedocs
from liner.client import (
    DEFAULT_ADDRESS,
    Client,
    Image,
    LinerClientError,
    Platform,
    SnapshotInfo,
    host_platform,
)
from liner.format import (
    age,
    human_size,
    labels_text,
    parse_duration,
    parse_labels,
    rfc3339,
    snapshot_tree,
    table,
)
from liner.progress import Display, LiveDisplay, NoDisplay, PlainDisplay
from liner.version import __version__

CLIENT_REVISION = "liner"
EXPIRE_LABEL = "containerd.io/gc.expire"


class Failure(click.ClickException):
    """A runtime failure: shown as `liner: <message>`, exit code 1."""

    exit_code = 1

    def show(self, file: Any = None) -> None:
        click.echo(f"liner: {self.message}", err=True)


def _fail_item(message: str) -> None:
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


class LinerGroup(AliasGroup):
    """The top-level group: the one place client errors become `liner: ...` lines."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except LinerClientError as e:
            raise Failure(str(e)) from None


@dataclass(slots=True)
class Settings:
    """The global options; the client is made on first use, so usage errors need no daemon."""

    address: str
    namespace: str
    timeout: float
    _client: Client | None = field(default=None, init=False, repr=False)

    def client(self) -> Client:
        if self._client is None:
            self._client = Client(self.address, self.namespace, timeout=self.timeout or None)
            click.get_current_context().call_on_close(self._client.close)
        return self._client


def _client() -> Client:
    return click.get_current_context().find_object(Settings).client()  # type: ignore[union-attr]


def _labels(pairs: Sequence[str], param: str) -> dict[str, str]:
    try:
        return parse_labels(pairs)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint=param) from None


def _exit_if(failed: bool) -> None:
    if failed:
        click.get_current_context().exit(1)


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
@click.version_option(__version__, "--version", "-v", prog_name="liner")
@click.pass_context
def cli(ctx: click.Context, address: str, namespace: str, timeout: float) -> None:
    """Command line client for linerd."""
    ctx.obj = Settings(address=address, namespace=namespace, timeout=timeout)


# -- version --------------------------------------------------------------------------------


@cli.command()
def version() -> None:
    """Show client and server versions."""
    click.echo("Client:")
    click.echo(f"  Version:  {__version__}")
    click.echo(f"  Revision: {CLIENT_REVISION}")
    click.echo(f"  Python:   {platform.python_version()}")
    click.echo()
    client = _client()
    server = client.version()
    uuid = client.server().uuid
    click.echo("Server:")
    click.echo(f"  Version:  {server.version}")
    click.echo(f"  Revision: {server.revision}")
    click.echo(f"  UUID:     {uuid}")


# -- namespaces -----------------------------------------------------------------------------


@cli.group(cls=AliasGroup)
def namespaces() -> None:
    """Manage namespaces (alias: ns)."""


@namespaces.command("ls")
@click.option("--quiet", "-q", is_flag=True, help="print only the names")
def namespaces_ls(quiet: bool) -> None:
    """List namespaces."""
    found = _client().namespaces()
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
    _client().create_namespace(name, _labels(labels, "KEY=VALUE"))


@namespaces.command("rm")
@click.argument("names", nargs=-1, required=True, metavar="NAME...")
def namespaces_rm(names: tuple[str, ...]) -> None:
    """Remove empty namespaces."""
    client = _client()
    failed = False
    for name in names:
        try:
            client.delete_namespace(name)
        except LinerClientError as e:
            if e.code_name == "UNAVAILABLE":
                raise
            _fail_item(str(e))
            failed = True
        else:
            click.echo(name)
    _exit_if(failed)


@namespaces.command("label")
@click.argument("name")
@click.argument("labels", nargs=-1, metavar="[KEY=VALUE]...")
def namespaces_label(name: str, labels: tuple[str, ...]) -> None:
    """Set labels on a namespace (KEY= removes KEY); with none, print its labels."""
    client = _client()
    if not labels:
        for key, value in sorted(client.get_namespace(name).labels.items()):
            click.echo(f"{key}={value}")
        return
    client.set_namespace_labels(name, _labels(labels, "KEY=VALUE"))


# -- content --------------------------------------------------------------------------------


@cli.group(cls=AliasGroup)
def content() -> None:
    """Manage content (blobs)."""


@content.command("ls")
@click.option("--quiet", "-q", is_flag=True, help="print only the digests")
def content_ls(quiet: bool) -> None:
    """List content."""
    found = _client().content()
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
    for chunk in _client().read(digest):
        out.write(chunk)
    out.flush()


@content.command("rm")
@click.argument("digests", nargs=-1, required=True, metavar="DIGEST...")
def content_rm(digests: tuple[str, ...]) -> None:
    """Remove content from the namespace."""
    client = _client()
    failed = False
    for digest in digests:
        try:
            client.delete_content(digest)
        except LinerClientError as e:
            if e.code_name == "UNAVAILABLE":
                raise
            _fail_item(str(e))
            failed = True
        else:
            click.echo(digest)
    _exit_if(failed)


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
    digest = _client().write(
        ref,
        click.open_file("-", "rb"),
        total=expected_size,
        expected=expected_digest,
        labels=_labels(labels, "--label"),
    )
    click.echo(digest)


@content.command("active")
@click.option("--quiet", "-q", is_flag=True, help="print only the refs")
def content_active(quiet: bool) -> None:
    """List ingests in progress."""
    found = _client().ingests()
    if quiet:
        for status in found:
            click.echo(status.ref)
        return
    now = datetime.now(UTC)
    rows = [[s.ref, human_size(s.offset), age(s.started_at, now)] for s in found]
    click.echo(table(["REF", "SIZE", "AGE"], rows), nl=False)


# -- leases ---------------------------------------------------------------------------------


@cli.group(cls=AliasGroup)
def leases() -> None:
    """Manage leases."""


@leases.command("ls")
@click.option("--quiet", "-q", is_flag=True, help="print only the ids")
def leases_ls(quiet: bool) -> None:
    """List leases."""
    found = _client().leases()
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
    values = _labels(labels, "--label")
    if lifetime:
        values[EXPIRE_LABEL] = rfc3339(datetime.now(UTC) + lifetime)
    click.echo(_client().create_lease(lease_id, values).id)


@leases.command("rm")
@click.option("--sync", is_flag=True, help="wait for the garbage collection to finish")
@click.argument("ids", nargs=-1, required=True, metavar="ID...")
def leases_rm(sync: bool, ids: tuple[str, ...]) -> None:
    """Remove leases."""
    client = _client()
    failed = False
    for lease_id in ids:
        try:
            client.delete_lease(lease_id, sync=sync)
        except LinerClientError as e:
            if e.code_name == "UNAVAILABLE":
                raise
            _fail_item(str(e))
            failed = True
        else:
            click.echo(lease_id)
    _exit_if(failed)


# -- images ---------------------------------------------------------------------------------


@cli.group(cls=AliasGroup)
def images() -> None:
    """Manage images (aliases: image, i)."""


def _credentials(user: str | None) -> tuple[str, str]:
    """`--user user:pass`, or `--user user` with the password prompted for (stdin a terminal)
    or read from stdin's first line (stdin not a terminal, e.g. `echo $PW | liner ...`)."""
    if not user:
        return "", ""
    username, sep, secret = user.partition(":")
    if not username:
        raise click.BadParameter("want user[:password]", param_hint="--user")
    if sep:
        return username, secret
    if sys.stdin.isatty():
        secret = click.prompt("Password", hide_input=True, err=True, default="", show_default=False)
    else:
        secret = sys.stdin.readline().rstrip("\r\n")
    if not secret:
        raise Failure(f"--user {username}: no password given (on the terminal or stdin)")
    return username, secret


def _display(mode: str) -> Display:
    if mode == "auto":
        mode = "tty" if sys.stdout.isatty() else "plain"
    if mode == "tty":
        return LiveDisplay(sys.stdout, force_terminal=True)
    if mode == "plain":
        return PlainDisplay(click.echo)
    return NoDisplay()


@images.command("pull")
@click.option(
    "--platform",
    "platforms",
    multiple=True,
    metavar="OS/ARCH[/VARIANT]",
    help="platform to pull (repeatable); default: this machine's",
)
@click.option("--all-platforms", is_flag=True, help="fetch the content of every platform")
@click.option("--snapshotter", default="", help="snapshotter to unpack into [default: linerd's]")
@click.option("--skip-unpack", is_flag=True, help="fetch the content only, do not unpack")
@click.option("--plain-http", is_flag=True, help="talk plain HTTP to the registry")
@click.option(
    "--user",
    "-u",
    metavar="USER[:PASSWORD]",
    help="registry credentials; without :PASSWORD it is prompted for, or read from stdin",
)
@click.option(
    "--progress",
    type=click.Choice(["auto", "tty", "plain", "quiet"]),
    default="auto",
    show_default=True,
    help="live display (tty), one line per state change (plain), or none; auto picks by stdout",
)
@click.argument("ref")
def images_pull(
    platforms: tuple[str, ...],
    all_platforms: bool,
    snapshotter: str,
    skip_unpack: bool,
    plain_http: bool,
    user: str | None,
    progress: str,
    ref: str,
) -> None:
    """Pull an image (in linerd) and unpack it; prints `NAME DIGEST` when done."""
    try:
        wanted = [Platform.parse(p) for p in platforms]
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--platform") from None
    username, secret = _credentials(user)
    client = _client()
    display = _display(progress)
    final = None
    try:
        for update in client.pull(
            ref,
            wanted,
            all_platforms=all_platforms,
            snapshotter=snapshotter,
            skip_unpack=skip_unpack,
            plain_http=plain_http,
            username=username,
            secret=secret,
        ):
            display.update(update)
            if update.done:
                final = update
    finally:
        display.close()
    if final is None or final.target is None:
        raise Failure(f"{ref}: the pull ended without a result")
    click.echo(f"{final.name} {final.target.digest}")


@images.command("ls")
@click.option("--quiet", "-q", is_flag=True, help="print only the names")
@click.argument("filters", nargs=-1, metavar="[FILTER]...")
def images_ls(quiet: bool, filters: tuple[str, ...]) -> None:
    """List images, optionally matching filters (e.g. name==NAME, labels.KEY==VALUE).

    SIZE is the config and layers of this machine's platform's manifest (or, when that
    platform was not pulled, of the first one that was); `-` when none is in the store.
    """
    client = _client()
    found = client.images(filters)
    if quiet:
        for image in found:
            click.echo(image.name)
        return
    docs = imagedocs.Documents(client)
    here = host_platform()
    rows = []
    for image in found:
        summary = imagedocs.summarize(docs, image, here)
        rows.append(
            [
                image.name,
                image.target.media_type,
                image.target.digest,
                human_size(summary.size) if summary.size is not None else "-",
                ",".join(map(str, summary.platforms)) or "-",
                labels_text(image.labels),
            ]
        )
    click.echo(table(["REF", "TYPE", "DIGEST", "SIZE", "PLATFORMS", "LABELS"], rows), nl=False)


@images.command("rm")
@click.option("--sync", is_flag=True, help="wait for the garbage collection to finish")
@click.argument("names", nargs=-1, required=True, metavar="REF...")
def images_rm(sync: bool, names: tuple[str, ...]) -> None:
    """Remove images (their content goes when nothing else uses it)."""
    client = _client()
    failed = False
    for name in names:
        try:
            client.delete_image(name, sync=sync)
        except LinerClientError as e:
            if e.code_name == "UNAVAILABLE":
                raise
            _fail_item(str(e))
            failed = True
        else:
            click.echo(name)
    _exit_if(failed)


@images.command("tag")
@click.option("--force", "-f", is_flag=True, help="replace a DST that exists")
@click.argument("source", metavar="SRC")
@click.argument("targets", nargs=-1, required=True, metavar="DST...")
def images_tag(force: bool, source: str, targets: tuple[str, ...]) -> None:
    """Give image SRC more names: each DST gets SRC's target and labels."""
    client = _client()
    image = client.get_image(source)
    for target in targets:
        try:
            client.create_image(target, image.target, image.labels)
        except LinerClientError as e:
            if not (force and e.code_name == "ALREADY_EXISTS"):
                raise
            # An update in place, never delete + create: the old DST's content stays referenced.
            client.update_image(target, target=image.target, labels=image.labels)
        click.echo(target)


@images.command("inspect")
@click.argument("name", metavar="REF")
def images_inspect(name: str) -> None:
    """Print an image as JSON: its record (Image), and from the content store its Index (if
    any), this machine's platform's Manifest and Config."""
    client = _client()
    image: Image = client.get_image(name)
    doc = imagedocs.inspect(imagedocs.Documents(client), image, host_platform())
    click.echo(json.dumps(doc, indent=2))


# -- snapshots ------------------------------------------------------------------------------

_SNAPSHOTTER = "liner.snapshotter"


@cli.group(cls=AliasGroup)
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
    found = sorted(_client().snapshots(_snapshotter(), filters), key=lambda i: i.name)
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
    client = _client()
    snapshotter = _snapshotter()
    failed = False
    for key in keys:
        try:
            client.remove_snapshot(snapshotter, key)
        except LinerClientError as e:
            if e.code_name == "UNAVAILABLE":
                raise
            _fail_item(str(e))
            failed = True
        else:
            click.echo(key)
    _exit_if(failed)


@snapshots.command("usage")
@click.option("--bytes", "-b", "in_bytes", is_flag=True, help="sizes in bytes")
@click.argument("key", required=False)
def snapshots_usage(in_bytes: bool, key: str | None) -> None:
    """Disk usage of one snapshot, or of each."""
    client = _client()
    snapshotter = _snapshotter()
    keys = [key] if key else sorted(i.name for i in client.snapshots(snapshotter))
    rows = []
    for k in keys:
        try:
            usage = client.snapshot_usage(snapshotter, k)
        except LinerClientError as e:
            if key or e.code_name != "NOT_FOUND":
                raise
            continue  # removed since it was listed
        size = str(usage.size) if in_bytes else human_size(usage.size)
        rows.append([k, size, str(usage.inodes)])
    click.echo(table(["KEY", "SIZE", "INODES"], rows), nl=False)


@snapshots.command("tree")
def snapshots_tree() -> None:
    """Show snapshots as a tree of parents and children."""
    found = _client().snapshots(_snapshotter())
    click.echo(snapshot_tree([(i.name, i.parent) for i in found]), nl=False)


@snapshots.command("info")
@click.argument("key")
def snapshots_info(key: str) -> None:
    """Print a snapshot's information as JSON (as ctr does)."""
    info = _client().stat_snapshot(_snapshotter(), key)
    doc: dict[str, Any] = {"Kind": _kind(info), "Name": info.name}
    if info.parent:
        doc["Parent"] = info.parent
    if info.labels:
        doc["Labels"] = dict(sorted(info.labels.items()))
    doc["Created"] = imagedocs.json_time(info.created_at)
    doc["Updated"] = imagedocs.json_time(info.updated_at)
    click.echo(json.dumps(doc, indent=2))


# -- config ---------------------------------------------------------------------------------


@cli.group(cls=AliasGroup)
def config() -> None:
    """linerd configuration."""


@config.command("default")
def config_default() -> None:
    """Print linerd's default configuration (TOML)."""
    from linerd.config import Config, to_toml

    click.echo(to_toml(Config()), nl=False)


# -- check ----------------------------------------------------------------------------------


@cli.command("check")
@click.option(
    "--root",
    default="/var/lib/liner",
    show_default=True,
    type=click.Path(),
    help="linerd's root directory",
)
@click.pass_obj
def check(settings: Settings, root: str) -> None:
    """Check the daemon, its store and database, runtimes, conmon, overlay and cgroups."""
    from liner.check import run_checks

    results = run_checks(settings.address, settings.namespace, Path(root))
    rows = [(c.name, "ok" if c.ok else "FAIL", c.detail) for c in results]
    click.echo(table(["CHECK", "STATUS", "DETAIL"], rows), nl=False)
    # crun is optional: only the others make the check fail.
    _exit_if(any(not c.ok for c in results if c.name != "crun"))


# -- entry point ----------------------------------------------------------------------------


def _quiet_stdout() -> None:
    """After a broken pipe, point stdout at /dev/null so the exit-time flush is silent."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Console entry point: run the CLI, never letting a traceback out."""
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


if __name__ == "__main__":
    main()
