"""`liner logs`."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

import click

from liner.commands.base import Failure, open_client
from liner.errors import NotFound

if TYPE_CHECKING:
    from liner.logs import Entry

# How often -f looks at the file for more: a person reading, not a program waiting on it.
_FOLLOW_INTERVAL = 0.2


@click.command("logs")
@click.option("--follow", "-f", is_flag=True, help="keep printing what the container writes")
@click.option("--tail", type=click.IntRange(min=0), help="only the last N lines")
@click.argument("container_id", metavar="ID")
def logs(follow: bool, tail: int | None, container_id: str) -> None:
    """Print the output of a container whose task was started without a terminal or stdio
    (e.g. `liner run -d`); stderr lines go to stderr. linerd keeps it in its state
    directory, capped in size."""
    from liner import logs as logfile
    from liner.dirs import state_dir

    client = open_client()
    try:
        client.get_container(container_id)
    except NotFound:
        raise Failure(f"container {container_id!r} not found") from None
    try:
        state = state_dir(client)
    except LookupError as e:
        raise Failure(str(e)) from None
    path = logfile.log_path(state, client.namespace, container_id)
    try:
        entries, offset = logfile.read_log(path, tail)
    except FileNotFoundError:
        if not follow:
            raise Failure(
                f"container {container_id!r} has no log: linerd keeps one for a task started "
                "without a terminal or stdio (liner run -d)"
            ) from None
        entries, offset = [], 0
    except PermissionError:
        raise Failure(f"{path}: permission denied (linerd's state directory)") from None
    _write(entries)
    if not follow:
        return
    follower = logfile.Follower(path, offset)
    try:
        while True:
            _write(follower.poll())
            time.sleep(_FOLLOW_INTERVAL)
    except KeyboardInterrupt:
        pass
    finally:
        follower.close()


def _write(entries: Iterable[Entry]) -> None:
    from liner.logs import entries_text

    for stream, data in entries_text(entries):
        out = sys.stderr.buffer if stream == "stderr" else sys.stdout.buffer
        out.write(data)
    sys.stdout.buffer.flush()
    sys.stderr.buffer.flush()
