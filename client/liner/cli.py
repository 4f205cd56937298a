"""`liner`: ctr-style nouns and verbs over linerd's API.

Every failure ends as one `liner: <message>` line on stderr and exit code 1; usage errors exit 2.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from liner.common import (
    DEFAULT_ADDRESS,
    DEFAULT_RUNTIME,
    PROCESS_URL,
    RESOURCES_URL,
    SPEC_URL,
    LinerClientError,
    RunError,
    lazy_module,
)
from liner.errors import AlreadyExists, NotFound, Unavailable
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
from liner_common.labels import GC_EXPIRE, STOP_SIGNAL

if TYPE_CHECKING:
    from liner import events as eventdocs
    from liner import images as imagedocs
    from liner import run as run_mod
    from liner.client import AnyValue, Client, Image, Process, SnapshotInfo
    from liner.progress import Display
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


class LinerGroup(AliasGroup):
    """The top-level group: the one place client errors become `liner: ...` lines."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (LinerClientError, RunError) as e:
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
            from liner.client import Client

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


def _each(items: Sequence[str], remove: Callable[[str], object]) -> None:
    """Remove every item, echoing each one removed; one error line per failure, exit 1 at
    the end if any failed (a daemon that is down stops it at once)."""
    failed = False
    for item in items:
        try:
            remove(item)
        except Unavailable:
            raise
        except LinerClientError as e:
            _fail_item(str(e))
            failed = True
        else:
            click.echo(item)
    _exit_if(failed)


def _exit_if(failed: bool) -> None:
    if failed:
        click.get_current_context().exit(1)


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


# -- version --------------------------------------------------------------------------------


@cli.command()
def version() -> None:
    """Show client and server versions."""
    import platform

    from liner.version import installed_version

    click.echo("Client:")
    click.echo(f"  Version:  {installed_version()}")
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
    _each(names, client.delete_namespace)


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
    _each(digests, client.delete_content)


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
        values[GC_EXPIRE] = rfc3339(datetime.now(UTC) + lifetime)
    click.echo(_client().create_lease(lease_id, values).id)


@leases.command("rm")
@click.option("--sync", is_flag=True, help="wait for the garbage collection to finish")
@click.argument("ids", nargs=-1, required=True, metavar="ID...")
def leases_rm(sync: bool, ids: tuple[str, ...]) -> None:
    """Remove leases."""
    client = _client()
    _each(ids, lambda lease_id: client.delete_lease(lease_id, sync=sync))


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
    from liner.progress import LiveDisplay, NoDisplay, PlainDisplay

    if mode == "auto":
        mode = "tty" if sys.stdout.isatty() else "plain"
    if mode == "tty":
        return LiveDisplay(sys.stdout, force_terminal=True)
    if mode == "plain":
        return PlainDisplay(click.echo)
    return NoDisplay()


def _registry_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """--plain-http, --user and --progress, as pull and push take them."""
    for option in reversed(
        [
            click.option("--plain-http", is_flag=True, help="talk plain HTTP to the registry"),
            click.option(
                "--user",
                "-u",
                metavar="USER[:PASSWORD]",
                help="registry credentials; without :PASSWORD it is prompted for, or read "
                "from stdin",
            ),
            click.option(
                "--progress",
                type=click.Choice(["auto", "tty", "plain", "quiet"]),
                default="auto",
                show_default=True,
                help="live display (tty), one line per state change (plain), or none; auto "
                "picks by stdout",
            ),
        ]
    ):
        command = option(command)
    return command


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
@_registry_options
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
        wanted = [imagespec.parse_platform(p) for p in platforms]
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--platform") from None
    username, secret = _credentials(user)
    client = _client()
    updates = client.pull(
        ref,
        wanted,
        all_platforms=all_platforms,
        snapshotter=snapshotter,
        skip_unpack=skip_unpack,
        plain_http=plain_http,
        username=username,
        secret=secret,
    )
    _follow(updates, _display(progress), f"{ref}: the pull")


@images.command("push")
@click.option(
    "--platform",
    "platforms",
    multiple=True,
    metavar="OS/ARCH[/VARIANT]",
    help="for an index: push only these platforms' manifests (repeatable); default: all",
)
@_registry_options
@click.argument("ref")
@click.argument("local", required=False, default="", metavar="[LOCAL]")
def images_push(
    platforms: tuple[str, ...],
    plain_http: bool,
    user: str | None,
    progress: str,
    ref: str,
    local: str,
) -> None:
    """Push image LOCAL (default: REF) of linerd's store to the registry as REF; prints
    `REF DIGEST` when done."""
    try:
        wanted = [imagespec.parse_platform(p) for p in platforms]
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--platform") from None
    username, secret = _credentials(user)
    client = _client()
    updates = client.push(
        ref, local, wanted, plain_http=plain_http, username=username, secret=secret
    )
    _follow(updates, _display(progress), f"{ref}: the push")


def _follow(updates: Any, display: Display, what: str) -> None:
    """Show a pull's or push's progress; print `NAME DIGEST` of the result."""
    final = None
    try:
        for update in updates:
            display.update(update)
            if update.done:
                final = update
    finally:
        display.close()
    if final is None or final.target is None:
        raise Failure(f"{what} ended without a result")
    click.echo(f"{final.name} {final.target.digest}")


@images.command("export")
@click.option(
    "--platform",
    "platforms",
    multiple=True,
    metavar="OS/ARCH[/VARIANT]",
    help="for an index: export these platforms' manifests (repeatable); default: this machine's",
)
@click.option("--all-platforms", is_flag=True, help="export every manifest of an index")
@click.option(
    "--skip-manifest-json", is_flag=True, help="do not write docker's manifest.json as well"
)
@click.option(
    "--dir",
    "as_dir",
    is_flag=True,
    help="OUT is a directory to write the OCI image layout into (it must not exist)",
)
@click.argument("out", metavar="OUT.tar|OUT-DIR|-")
@click.argument("refs", nargs=-1, required=True, metavar="REF...")
def images_export(
    platforms: tuple[str, ...],
    all_platforms: bool,
    skip_manifest_json: bool,
    as_dir: bool,
    out: str,
    refs: tuple[str, ...],
) -> None:
    """Export images as an OCI image layout: a tar (to a file, or `-` for stdout), or with
    --dir a directory."""
    try:
        wanted = [imagespec.parse_platform(p) for p in platforms]
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--platform") from None
    client = _client()
    chunks = client.export(
        refs, wanted, all_platforms=all_platforms, docker_manifest=not skip_manifest_json
    )
    if as_dir:
        _extract_layout(chunks, Path(out))
        return
    if out == "-":
        if sys.stdout.isatty():
            raise Failure("refusing to write a tar to a terminal: redirect stdout or name a file")
        stream = sys.stdout.buffer
        for data in chunks:
            stream.write(data)
        stream.flush()
        return
    path = Path(out)
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        with open(partial, "wb") as f:
            for data in chunks:
                f.write(data)
        os.replace(partial, path)
    except OSError as e:
        raise Failure(f"{out}: {e.strerror or e}") from None
    finally:
        partial.unlink(missing_ok=True)


def _extract_layout(chunks: Any, out: Path) -> None:
    """Unpack the exported tar into a new directory (built beside it, then renamed)."""
    if out.exists():
        raise Failure(f"{out}: already exists")
    partial = out.with_name(f".{out.name}.partial-{os.getpid()}")
    read_fd, write_fd = os.pipe()

    def feed() -> None:
        with os.fdopen(write_fd, "wb") as pipe, contextlib.suppress(BrokenPipeError):
            for data in chunks:
                pipe.write(data)

    import shutil
    import tarfile

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    try:
        with os.fdopen(read_fd, "rb") as pipe, tarfile.open(fileobj=pipe, mode="r|") as tar:
            tar.extractall(partial, filter="data")
        feeder.join()
        os.replace(partial, out)
    except (OSError, tarfile.TarError) as e:
        raise Failure(f"{out}: {e}") from None
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def _directory_chunks(directory: Path, size: int = 1 << 20) -> Any:
    """An OCI layout directory as a tar stream (written by a thread into a pipe, so memory
    stays bounded whatever the blobs weigh)."""
    import tarfile

    read_fd, write_fd = os.pipe()
    failure: list[BaseException] = []

    def write() -> None:
        try:
            with os.fdopen(write_fd, "wb") as pipe, tarfile.open(fileobj=pipe, mode="w|") as tar:
                for path in sorted(directory.rglob("*")):
                    if path.is_file() and not path.is_symlink():
                        tar.add(path, arcname=str(path.relative_to(directory)))
        except BrokenPipeError:
            pass
        except BaseException as e:
            failure.append(e)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    with os.fdopen(read_fd, "rb") as pipe:
        while data := pipe.read(size):
            yield data
    writer.join()
    if failure:
        raise Failure(f"{directory}: {failure[0]}")


def _file_chunks(source: Any, size: int = 1 << 20) -> Any:
    while True:
        data = source.read(size)
        if not data:
            return
        yield data


@images.command("import")
@click.option("--snapshotter", default="", help="snapshotter to unpack into [default: linerd's]")
@click.option("--skip-unpack", is_flag=True, help="store the content only, do not unpack")
@click.option(
    "--base-name",
    default="",
    help="name for images the archive does not name fully (BASE:tag, BASE@digest)",
)
@click.option(
    "--all-platforms", is_flag=True, help="every platform of an index must be in the archive"
)
@click.argument("source", metavar="IN.tar|IN-DIR|-")
def images_import(
    snapshotter: str, skip_unpack: bool, base_name: str, all_platforms: bool, source: str
) -> None:
    """Import an OCI image layout (a tar, `-` for stdin, or a directory) or a Docker archive
    (`docker save`), and unpack it; prints `NAME DIGEST` per image."""
    client = _client()
    f: Any = None
    if source != "-" and Path(source).is_dir():
        chunks = _directory_chunks(Path(source))
    else:
        try:
            f = sys.stdin.buffer if source == "-" else open(source, "rb")  # noqa: SIM115
        except OSError as e:
            raise Failure(f"{source}: {e.strerror or e}") from None
        chunks = _file_chunks(f)
    try:
        imported = client.import_archive(
            chunks,
            snapshotter=snapshotter,
            skip_unpack=skip_unpack,
            base_name=base_name,
            all_platforms=all_platforms,
        )
    finally:
        if f is not None and f is not sys.stdin.buffer:
            f.close()
    for name, target, _ in imported:
        click.echo(f"{name} {target.digest}")


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
    here = platformspec.host_platform()
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
    _each(names, lambda name: client.delete_image(name, sync=sync))


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
        except AlreadyExists:
            if not force:
                raise
            # An update in place, never delete + create: the old DST's content stays referenced.
            client.update_image(target, target=image.target, labels=image.labels)
        click.echo(target)


@images.command("inspect")
@click.argument("name", metavar="REF")
def images_inspect(name: str) -> None:
    """Print an image as JSON: its record (Image), and from the content store its Index (if
    any), this machine's platform's Manifest and Config."""
    import json

    client = _client()
    image: Image = client.get_image(name)
    doc = imagedocs.inspect(imagedocs.Documents(client), image, platformspec.host_platform())
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
    _each(keys, lambda key: client.remove_snapshot(snapshotter, key))


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
    found = _client().snapshots(_snapshotter())
    click.echo(snapshot_tree([(i.name, i.parent) for i in found]), nl=False)


@snapshots.command("info")
@click.argument("key")
def snapshots_info(key: str) -> None:
    """Print a snapshot's information as JSON (as ctr does)."""
    import json

    info = _client().stat_snapshot(_snapshotter(), key)
    doc: dict[str, Any] = {"Kind": _kind(info), "Name": info.name}
    if info.parent:
        doc["Parent"] = info.parent
    if info.labels:
        doc["Labels"] = dict(sorted(info.labels.items()))
    doc["Created"] = imagedocs.json_time(info.created_at)
    doc["Updated"] = imagedocs.json_time(info.updated_at)
    click.echo(json.dumps(doc, indent=2))


# -- run ------------------------------------------------------------------------------------


def _sizes(text: str | None, param: str) -> int | None:
    if text is None:
        return None
    try:
        return run_mod.parse_size(text)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint=param) from None


def _env(pairs: Sequence[str], env_file: str | None) -> list[str]:
    entries: list[str] = []
    if env_file:
        try:
            entries += run_mod.read_env_file(env_file)
        except (OSError, ValueError) as e:
            raise click.BadParameter(str(e), param_hint="--env-file") from None
    for pair in pairs:
        if "=" not in pair or pair.startswith("="):
            if pair in os.environ:  # docker's `--env NAME`: our value
                entries.append(f"{pair}={os.environ[pair]}")
                continue
            raise click.BadParameter(f"invalid {pair!r}: want KEY=VALUE", param_hint="--env")
        entries.append(pair)
    return entries


def _exit_with(code: int) -> NoReturn:
    click.get_current_context().exit(code)
    raise AssertionError("unreachable")


@cli.command("run", context_settings={"allow_interspersed_args": False})
@click.option("--rm", is_flag=True, help="remove the task, container and snapshot afterwards")
@click.option("--detach", "-d", is_flag=True, help="start the task and exit (prints nothing)")
@click.option("--tty", "-t", is_flag=True, help="allocate a terminal, attach ours in raw mode")
@click.option("--interactive", "-i", is_flag=True, help="keep stdin attached (also with -d)")
@click.option("--env", "envs", multiple=True, metavar="KEY=VALUE", help="repeatable")
@click.option("--env-file", type=click.Path(dir_okay=False), help="KEY=VALUE lines")
@click.option(
    "--mount",
    "mounts",
    multiple=True,
    metavar="type=bind,src=PATH,dst=PATH[,options=rbind:ro]",
    help="repeatable",
)
@click.option("--memory", metavar="SIZE", help="memory limit, e.g. 64m or 1g")
@click.option("--cpus", type=click.FloatRange(min=0, min_open=True), help="CPUs, e.g. 0.5")
@click.option("--pids-limit", type=click.IntRange(min=1), help="maximum number of processes")
@click.option("--user", "-u", default="", help="uid[:gid] or name[:group] in the image")
@click.option("--cwd", default="", help="working directory in the container")
@click.option("--read-only", is_flag=True, help="read-only root filesystem")
@click.option("--privileged", is_flag=True, help="all capabilities, all devices, no masks")
@click.option("--net-host", is_flag=True, help="the host's network namespace")
@click.option("--runtime", default=DEFAULT_RUNTIME, show_default=True, help="runtime name")
@click.option("--runc-binary", default="", help="runtime binary to use instead of the runtime's")
@click.option(
    "--snapshotter",
    envvar="LINER_SNAPSHOTTER",
    default="overlayfs",
    show_default=True,
    help="snapshotter the image was unpacked into",
)
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE", help="container label")
@click.option(
    "--stop-timeout",
    type=click.FloatRange(min=0),
    default=10.0,
    show_default=True,
    help="seconds after a forwarded Ctrl-C/SIGTERM before the task is killed",
)
@click.argument("image")
@click.argument("container_id", metavar="ID")
@click.argument("command", nargs=-1, type=click.UNPROCESSED, metavar="[CMD]...")
def run_command(
    rm: bool,
    detach: bool,
    tty: bool,
    interactive: bool,
    envs: tuple[str, ...],
    env_file: str | None,
    mounts: tuple[str, ...],
    memory: str | None,
    cpus: float | None,
    pids_limit: int | None,
    user: str,
    cwd: str,
    read_only: bool,
    privileged: bool,
    net_host: bool,
    runtime: str,
    runc_binary: str,
    snapshotter: str,
    labels: tuple[str, ...],
    stop_timeout: float,
    image: str,
    container_id: str,
    command: tuple[str, ...],
) -> None:
    """Run CMD (default: the image's) in a new container ID from IMAGE, as `ctr run` does.

    liner exits with the task's exit status (128+N when signal N ended it). Ctrl-C, SIGTERM,
    SIGHUP, SIGQUIT and SIGUSR1/2 are forwarded to the task; after Ctrl-C or SIGTERM the task
    has --stop-timeout seconds to exit before it is killed (SIGKILL, status 137), a second
    Ctrl-C kills it at once. With -t the local terminal is raw (Ctrl-C goes to the process).
    """
    if rm and detach:
        raise click.UsageError("--rm and --detach do not go together")
    try:
        parsed_mounts = [run_mod.parse_mount(m) for m in mounts]
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--mount") from None
    opts = run_mod.RunOptions(
        image=image,
        id=container_id,
        args=list(command),
        rm=rm,
        detach=detach,
        tty=tty,
        interactive=interactive,
        env=_env(envs, env_file),
        mounts=parsed_mounts,
        memory=_sizes(memory, "--memory"),
        cpus=cpus,
        pids_limit=pids_limit,
        user=user,
        cwd=cwd,
        read_only=read_only,
        privileged=privileged,
        net_host=net_host,
        runtime=runtime,
        runc_binary=runc_binary,
        snapshotter=snapshotter,
        labels=_labels(labels, "--label"),
        stop_timeout=stop_timeout,
    )
    code = run_mod.run(_client(), opts, run_mod.binary_streams())
    _exit_with(code)


# -- containers -----------------------------------------------------------------------------


@cli.group(cls=AliasGroup)
def containers() -> None:
    """Manage containers (aliases: container, c)."""


@containers.command("ls")
@click.option("--quiet", "-q", is_flag=True, help="print only the ids")
@click.argument("filters", nargs=-1, metavar="[FILTER]...")
def containers_ls(quiet: bool, filters: tuple[str, ...]) -> None:
    """List containers, optionally matching filters (e.g. image==REF, labels.KEY==VALUE)."""
    found = sorted(_client().containers(filters), key=lambda c: c.id)
    if quiet:
        for c in found:
            click.echo(c.id)
        return
    rows = [[c.id, c.image or "-", c.runtime] for c in found]
    click.echo(table(["CONTAINER", "IMAGE", "RUNTIME"], rows), nl=False)


def _any_json(value: AnyValue | None) -> Any:
    import json

    if value is None:
        return None
    if value.type_url in (SPEC_URL, PROCESS_URL, RESOURCES_URL):
        try:
            return json.loads(value.value)
        except ValueError:
            pass
    decoded = eventdocs.decode(value.type_url, value.value)
    if decoded is not None:
        return {"@type": value.type_url, **decoded}
    return eventdocs.payload_json(value.type_url, value.value, None)


@containers.command("info")
@click.argument("container_id", metavar="ID")
def containers_info(container_id: str) -> None:
    """Print a container's record as JSON, its spec decoded (as ctr does)."""
    import json

    c = _client().get_container(container_id)
    doc: dict[str, Any] = {
        "ID": c.id,
        "Labels": dict(sorted(c.labels.items())) or None,
        "Image": c.image,
        "Runtime": {"Name": c.runtime, "Options": _any_json(c.runtime_options)},
        "SnapshotKey": c.snapshot_key,
        "Snapshotter": c.snapshotter,
        "CreatedAt": imagedocs.json_time(c.created_at),
        "UpdatedAt": imagedocs.json_time(c.updated_at),
        "Extensions": {k: _any_json(v) for k, v in sorted(c.extensions.items())} or None,
        "SandboxID": c.sandbox,
        "Spec": _any_json(c.spec),
    }
    click.echo(json.dumps(doc, indent=4))


def _task_or_none(client: Client, container_id: str) -> Process | None:
    try:
        return client.get_task(container_id)
    except NotFound:
        return None


@containers.command("rm")
@click.option("--keep-snapshot", is_flag=True, help="leave the container's snapshot")
@click.argument("ids", nargs=-1, required=True, metavar="ID...")
def containers_rm(keep_snapshot: bool, ids: tuple[str, ...]) -> None:
    """Remove containers with their snapshots; a stopped task is deleted first, a running one
    refuses (kill it, or `liner tasks rm -f`, first)."""
    client = _client()
    failed = False
    for container_id in ids:
        try:
            container = client.get_container(container_id)
            task = _task_or_none(client, container_id)
            if task is not None:
                if task.status not in ("stopped", "created"):
                    raise Failure(
                        f"container {container_id!r} has a {task.status} task: "
                        "stop it first (liner tasks kill, or liner tasks rm -f)"
                    )
                run_mod.delete_task(client, container_id)
            if keep_snapshot:
                client.delete_container(container_id)
            else:
                run_mod.remove_container(client, container)
        except Unavailable:
            raise
        except (LinerClientError, Failure) as e:
            _fail_item(e.message)
            failed = True
        else:
            click.echo(container_id)
    _exit_if(failed)


# -- tasks ----------------------------------------------------------------------------------


@cli.group(cls=AliasGroup)
def tasks() -> None:
    """Manage tasks, the containers' running processes (aliases: task, t)."""


@tasks.command("ls")
@click.option("--quiet", "-q", is_flag=True, help="print only the ids")
def tasks_ls(quiet: bool) -> None:
    """List tasks."""
    found = sorted(_client().tasks(), key=lambda p: p.id)
    if quiet:
        for p in found:
            click.echo(p.id)
        return
    rows = [[p.id, str(p.pid), p.status.upper()] for p in found]
    click.echo(table(["TASK", "PID", "STATUS"], rows), nl=False)


def _signal(text: str) -> int:
    try:
        return run_mod.parse_signal(text)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--signal") from None


@tasks.command("kill")
@click.option("--signal", "-s", "sig", default="", help="signal [default: the image's, SIGTERM]")
@click.option("--all", "-a", "all_", is_flag=True, help="signal every process of the task")
@click.option("--exec-id", default="", help="signal this exec process instead")
@click.argument("container_id", metavar="ID")
def tasks_kill(sig: str, all_: bool, exec_id: str, container_id: str) -> None:
    """Send a signal to a task (default: the container's stop signal, else SIGTERM)."""
    if all_ and exec_id:
        raise click.UsageError("--all and --exec-id do not go together")
    client = _client()
    container = client.get_container(container_id)
    if not sig:
        sig = container.labels.get(STOP_SIGNAL, "SIGTERM")
    number = _signal(sig)
    client.get_task(container_id)
    client.kill_task(container_id, number, exec_id=exec_id, all=all_)


@tasks.command("exec", context_settings={"allow_interspersed_args": False})
@click.option("--exec-id", default="", help="id of the new process [default: generated]")
@click.option("--tty", "-t", is_flag=True, help="allocate a terminal, attach ours in raw mode")
@click.option("--interactive", "-i", is_flag=True, help="keep stdin attached")
@click.option("--detach", "-d", is_flag=True, help="start the process and exit")
@click.option("--env", "envs", multiple=True, metavar="KEY=VALUE", help="repeatable")
@click.option("--cwd", default="", help="working directory")
@click.option("--user", "-u", default="", help="numeric uid[:gid]")
@click.option(
    "--stop-timeout",
    type=click.FloatRange(min=0),
    default=10.0,
    show_default=True,
    help="seconds after a forwarded Ctrl-C/SIGTERM before the process is killed",
)
@click.argument("container_id", metavar="ID")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED, metavar="CMD...")
def tasks_exec(
    exec_id: str,
    tty: bool,
    interactive: bool,
    detach: bool,
    envs: tuple[str, ...],
    cwd: str,
    user: str,
    stop_timeout: float,
    container_id: str,
    command: tuple[str, ...],
) -> None:
    """Run CMD in a running task; liner exits with its exit status."""
    opts = run_mod.ExecOptions(
        id=container_id,
        args=list(command),
        exec_id=exec_id,
        tty=tty,
        interactive=interactive,
        env=_env(envs, None),
        cwd=cwd,
        user=user,
        detach=detach,
        stop_timeout=stop_timeout,
    )
    _exit_with(run_mod.exec_process(_client(), opts, run_mod.binary_streams()))


@tasks.command("ps")
@click.argument("container_id", metavar="ID")
def tasks_ps(container_id: str) -> None:
    """List a task's processes (host pids; INFO names the exec process a pid belongs to)."""
    found = _client().list_pids(container_id)
    rows = [[str(p.pid), p.exec_id or "-"] for p in found]
    click.echo(table(["PID", "INFO"], rows), nl=False)


@tasks.command("pause")
@click.argument("container_id", metavar="ID")
def tasks_pause(container_id: str) -> None:
    """Freeze a task's processes."""
    _client().pause_task(container_id)


@tasks.command("resume")
@click.argument("container_id", metavar="ID")
def tasks_resume(container_id: str) -> None:
    """Thaw a paused task."""
    _client().resume_task(container_id)


@tasks.command("metrics")
@click.argument("container_id", metavar="ID")
def tasks_metrics(container_id: str) -> None:
    """Show a task's cgroup numbers: CPU time, memory usage and limit, pids."""
    from liner_api.containerd.cgroups.v1 import metrics_pb2 as cgroups_pb2

    client = _client()
    client.get_task(container_id)  # NOT_FOUND for a container without a task
    found = [m for m in client.metrics([f"id=={container_id}"]) if m.id == container_id]
    if not found or found[0].data is None:
        raise Failure(f"no metrics for task {container_id!r} (is it running?)")
    data = found[0].data
    if not data.type_url.endswith("io.containerd.cgroups.v1.Metrics"):
        raise Failure(f"cannot decode metrics of type {data.type_url!r}")
    m = cgroups_pb2.Metrics.FromString(data.value)
    usage = m.memory.usage
    rows = [
        ["cpu.usage", f"{m.cpu.usage.total / 1e9:.3f}s"],
        ["cpu.kernel", f"{m.cpu.usage.kernel / 1e9:.3f}s"],
        ["cpu.user", f"{m.cpu.usage.user / 1e9:.3f}s"],
        ["memory.usage", human_size(usage.usage)],
        ["memory.max_usage", human_size(usage.max)],
        ["memory.limit", _limit(usage.limit, human_size)],
        ["memory.failcnt", str(usage.failcnt)],
        ["pids.current", str(m.pids.current)],
        ["pids.limit", _limit(m.pids.limit, str)],
    ]
    click.echo(f"ID: {container_id}")
    click.echo(table(["METRIC", "VALUE"], rows), nl=False)


def _limit(value: int, show: Any) -> str:
    # cgroup v1 reports "no limit" as a huge page-rounded number, pids as 0.
    if value == 0 or value >= 1 << 62:
        return "max"
    return str(show(value))


@tasks.command("rm")
@click.option("--force", "-f", is_flag=True, help="kill a running task first")
@click.option("--exec-id", default="", help="delete this (stopped) exec process instead")
@click.argument("container_id", metavar="ID")
def tasks_rm(force: bool, exec_id: str, container_id: str) -> None:
    """Delete a stopped task (or exec process); prints `ID EXIT-STATUS`."""
    client = _client()
    client.get_container(container_id)
    process = client.get_task(container_id, exec_id)
    if process.status not in ("stopped", "created"):
        if not force:
            raise Failure(
                f"task {container_id!r} is {process.status}: it must be stopped first "
                "(liner tasks kill, or -f)"
            )
        client.kill_task(container_id, signal.SIGKILL, exec_id=exec_id)
        run_mod.wait_interruptibly(client, container_id, exec_id)
    if exec_id:
        status = client.delete_process(container_id, exec_id)
        run_mod.remove_fifo_dir(process.stdin, process.stdout, process.stderr)
    else:
        status = run_mod.delete_task(client, container_id)
    click.echo(f"{exec_id or container_id} {status.status}")


# -- events ---------------------------------------------------------------------------------


@cli.command("events")
@click.argument("filters", nargs=-1, metavar="[FILTER]...")
def events(filters: tuple[str, ...]) -> None:
    """Print events as they happen, of every namespace (until Ctrl-C), one line each:
    `<timestamp> <namespace> <topic> <payload as JSON>`. Filters as containerd's, e.g.
    topic==/tasks/exit or namespace==default."""
    import json

    stream = _client().subscribe(filters)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        for event in stream:
            payload = eventdocs.payload_json(event.type_url, event.value, event.payload)
            text = json.dumps(payload, separators=(",", ":"))
            click.echo(f"{event.timestamp_text} {event.namespace} {event.topic} {text}")
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        stream.close()


def _interrupt(sig: int, frame: object) -> None:
    raise KeyboardInterrupt


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
    _exit_if(any(not c.ok for c in results if c.name != "crun"))


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
    _exit_if(bool(findings))


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
