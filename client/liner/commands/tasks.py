"""`liner tasks`."""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING, Any

import click

from liner.commands.base import AliasGroup, Failure, open_client, run_mod
from liner.commands.run import env_args, exit_with
from liner.format import human_size, table
from liner_common.labels import STOP_SIGNAL

if TYPE_CHECKING:
    from liner import run as run_mod


@click.group(cls=AliasGroup)
def tasks() -> None:
    """Manage tasks, the containers' running processes (aliases: task, t)."""


@tasks.command("ls")
@click.option("--quiet", "-q", is_flag=True, help="print only the ids")
def tasks_ls(quiet: bool) -> None:
    """List tasks."""
    found = sorted(open_client().tasks(), key=lambda p: p.id)
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
    client = open_client()
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
        env=env_args(envs, None),
        cwd=cwd,
        user=user,
        detach=detach,
        stop_timeout=stop_timeout,
    )
    exit_with(run_mod.exec_process(open_client(), opts, run_mod.binary_streams()))


@tasks.command("ps")
@click.argument("container_id", metavar="ID")
def tasks_ps(container_id: str) -> None:
    """List a task's processes (host pids; INFO names the exec process a pid belongs to)."""
    found = open_client().list_pids(container_id)
    rows = [[str(p.pid), p.exec_id or "-"] for p in found]
    click.echo(table(["PID", "INFO"], rows), nl=False)


@tasks.command("pause")
@click.argument("container_id", metavar="ID")
def tasks_pause(container_id: str) -> None:
    """Freeze a task's processes."""
    open_client().pause_task(container_id)


@tasks.command("resume")
@click.argument("container_id", metavar="ID")
def tasks_resume(container_id: str) -> None:
    """Thaw a paused task."""
    open_client().resume_task(container_id)


@tasks.command("metrics")
@click.argument("container_id", metavar="ID")
def tasks_metrics(container_id: str) -> None:
    """Show a task's cgroup numbers: CPU time, memory usage and limit, pids."""
    from liner_api.containerd.cgroups.v1 import metrics_pb2 as cgroups_pb2

    client = open_client()
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
    client = open_client()
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
