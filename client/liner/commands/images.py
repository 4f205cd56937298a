"""`liner images`."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from liner.commands.base import (
    AliasGroup,
    Failure,
    for_each,
    imagedocs,
    imagespec,
    open_client,
    platformspec,
)
from liner.errors import AlreadyExists
from liner.format import human_size, labels_text, table

if TYPE_CHECKING:
    from liner import images as imagedocs
    from liner.client import Image
    from liner.progress import Display
    from liner_common import imagespec
    from liner_common import platforms as platformspec


@click.group(cls=AliasGroup)
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


class _Quiet:
    """No display (`--progress quiet`): defined here, as liner.progress (its module, the
    image helpers it imports, ~9 ms of a start-up) has nothing a quiet pull needs."""

    def update(self, progress: Any) -> None:
        pass

    def close(self) -> None:
        pass


def progress_display(mode: str, *, err: bool = False) -> Display:
    """The progress display on stdout (or stderr, where stdout is a container's output)."""
    if mode == "quiet":
        return _Quiet()
    from liner.progress import LiveDisplay, PlainDisplay

    stream = sys.stderr if err else sys.stdout
    if mode == "auto":
        mode = "tty" if stream.isatty() else "plain"
    if mode == "tty":
        return LiveDisplay(stream, force_terminal=True)
    if mode == "plain":
        return PlainDisplay(lambda line: click.echo(line, err=err))
    return _Quiet()


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
    client = open_client()
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
    follow(updates, progress_display(progress), f"{ref}: the pull")


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
    client = open_client()
    updates = client.push(
        ref, local, wanted, plain_http=plain_http, username=username, secret=secret
    )
    follow(updates, progress_display(progress), f"{ref}: the push")


def follow(updates: Any, display: Display, what: str, *, echo: bool = True) -> Any:
    """Show a pull's or push's progress; print `NAME DIGEST` of the result (if `echo`);
    returns the last update (its `name` is the image's name in linerd)."""
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
    if echo:
        click.echo(f"{final.name} {final.target.digest}")
    return final


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
    client = open_client()
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
    client = open_client()
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
    client = open_client()
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
    client = open_client()
    for_each(names, lambda name: client.delete_image(name, sync=sync))


@images.command("tag")
@click.option("--force", "-f", is_flag=True, help="replace a DST that exists")
@click.argument("source", metavar="SRC")
@click.argument("targets", nargs=-1, required=True, metavar="DST...")
def images_tag(force: bool, source: str, targets: tuple[str, ...]) -> None:
    """Give image SRC more names: each DST gets SRC's target and labels."""
    client = open_client()
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

    client = open_client()
    image: Image = client.get_image(name)
    doc = imagedocs.inspect(imagedocs.Documents(client), image, platformspec.host_platform())
    click.echo(json.dumps(doc, indent=2))


@images.command("sign")
@click.option(
    "--key",
    "key_file",
    required=True,
    metavar="KEY",
    type=click.Path(dir_okay=False, path_type=Path),
    help="cosign private key (from `liner keys generate` or cosign); its password from "
    "$COSIGN_PASSWORD or the terminal",
)
@_registry_options
@click.argument("ref")
def images_sign(
    key_file: Path, plain_http: bool, user: str | None, progress: str, ref: str
) -> None:
    """Sign image REF as cosign does, and push the signature to REF's repository as
    `sha256-<hex>.sig`. What is signed is REF's target in linerd's image store (the digest
    the registry has for it once pushed); prints `SIGNATURE-REF DIGEST`."""
    from liner import cosign
    from liner.commands.keys import password
    from liner.errors import NotFound

    try:
        cosign.require()
        name = cosign.split_reference(ref)
        try:
            key_data = key_file.read_bytes()
        except OSError as e:
            raise Failure(f"{key_file}: {e.strerror or e}") from None
        private = cosign.load_private(key_data, password(confirm=False))
    except cosign.SignError as e:
        raise Failure(f"{key_file}: {e}") from None
    username, secret = _credentials(user)
    client = open_client()
    try:
        try:
            image = client.get_image(ref)
        except NotFound:
            image = client.get_image(str(name))  # the stored name is the normalized one
    except NotFound:
        raise Failure(
            f"{ref}: not in linerd's image store; pull (or build and push) it first: what is "
            "signed is the digest of its target there"
        ) from None
    signed = cosign.payload(
        cosign.docker_reference(name.host, name.repository), image.target.digest
    )
    sig = cosign.signature_image(signed, cosign.sign(private, signed))
    destination = f"{name.name}:{cosign.attachment_tag(image.target.digest)}"
    _push_signature(client, sig, destination, plain_http, username, secret, progress)


def _push_signature(
    client: Any,
    sig: Any,
    destination: str,
    plain_http: bool,
    username: str,
    secret: str,
    progress: str,
) -> None:
    """Write the signature's blobs through the Content API under a lease (so the collector
    keeps them until the push holds its own), then have linerd push the manifest."""
    import io
    from datetime import UTC, datetime, timedelta

    from liner.client import Descriptor

    expires = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    lease = client.create_lease(labels={"containerd.io/gc.expire": expires})
    try:
        with client.leased(lease.id):
            for blob in (sig.payload, sig.config, sig.manifest):
                client.write(
                    f"sign-{blob.digest}",
                    io.BytesIO(blob.data),
                    total=len(blob.data),
                    expected=blob.digest,
                )
            target = Descriptor(
                sig.manifest.media_type, sig.manifest.digest, len(sig.manifest.data)
            )
            updates = client.push(
                destination,
                plain_http=plain_http,
                username=username,
                secret=secret,
                target=target,
            )
            follow(updates, progress_display(progress), f"{destination}: the push")
    finally:
        client.delete_lease(lease.id)


@images.command("verify")
@click.option(
    "--key",
    "key_file",
    metavar="PUB",
    type=click.Path(dir_okay=False, path_type=Path),
    help="judge by this cosign public key alone (default: linerd's policy)",
)
@click.option("--plain-http", is_flag=True, help="talk plain HTTP to the registry")
@click.option(
    "--user",
    "-u",
    metavar="USER[:PASSWORD]",
    help="registry credentials; without :PASSWORD it is prompted for, or read from stdin",
)
@click.argument("ref")
def images_verify(key_file: Path | None, plain_http: bool, user: str | None, ref: str) -> None:
    """Print the verdict on the image REF names at its registry, and the requirement that
    decided it: by linerd's signature policy, or with --key by that cosign key. Exit 1 when
    it is rejected. Nothing is pulled."""
    public_key = b""
    if key_file is not None:
        try:
            public_key = key_file.read_bytes()
        except OSError as e:
            raise Failure(f"{key_file}: {e.strerror or e}") from None
    username, secret = _credentials(user)
    verdict = open_client().verify_image(
        ref, public_key=public_key, plain_http=plain_http, username=username, secret=secret
    )
    word = "accepted" if verdict.accepted else "rejected"
    scope = f" ({verdict.scope})" if verdict.scope else ""
    click.echo(f"{verdict.name}@{verdict.digest}: {word}")
    click.echo(f"  requirement: {verdict.requirement}{scope}")
    click.echo(f"  reason: {verdict.reason}")
    if not verdict.accepted:
        click.get_current_context().exit(1)
