"""`liner run`."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, NoReturn

import click

from liner.commands.base import label_args, open_client, run_mod
from liner.commands.images import follow, progress_display
from liner.common import DEFAULT_RUNTIME

if TYPE_CHECKING:
    from liner import run as run_mod


def _sizes(text: str | None, param: str) -> int | None:
    if text is None:
        return None
    try:
        return run_mod.parse_size(text)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint=param) from None


def env_args(pairs: Sequence[str], env_file: str | None) -> list[str]:
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


def exit_with(code: int) -> NoReturn:
    click.get_current_context().exit(code)
    raise AssertionError("unreachable")


@click.command("run", context_settings={"allow_interspersed_args": False})
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
@click.option(
    "--pull",
    type=click.Choice(["missing", "always", "never"]),
    default="missing",
    show_default=True,
    help="pull IMAGE first: if it is not there (or not unpacked), always, or never",
)
@click.option(
    "--progress",
    type=click.Choice(["auto", "tty", "plain", "quiet"]),
    default="auto",
    show_default=True,
    help="the pull's progress on stderr: live (tty), one line per state change, or none",
)
@click.option("--plain-http", is_flag=True, help="pull over plain HTTP")
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
    pull: str,
    progress: str,
    plain_http: bool,
    image: str,
    container_id: str,
    command: tuple[str, ...],
) -> None:
    """Run CMD (default: the image's) in a new container ID from IMAGE, as `ctr run` does.

    An image that is not there (or not unpacked for --snapshotter) is pulled first, with its
    progress on stderr, as podman and nerdctl do (--pull never: fail instead).

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
        env=env_args(envs, env_file),
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
        labels=label_args(labels, "--label"),
        stop_timeout=stop_timeout,
    )
    client = open_client()
    if pull == "always" or (pull == "missing" and not run_mod.image_ready(client, opts)):
        updates = client.pull(image, snapshotter=snapshotter, plain_http=plain_http)
        display = progress_display(progress, err=True)
        final = follow(updates, display, f"{image}: the pull", echo=False)
        # The pull names the image as linerd does (a short name normalized); run that one.
        opts = dataclasses.replace(opts, image=final.name or image)
    code = run_mod.run(client, opts, run_mod.binary_streams())
    exit_with(code)
