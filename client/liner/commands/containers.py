"""`liner containers`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from liner.commands.base import (
    AliasGroup,
    Failure,
    eventdocs,
    exit_if,
    fail_item,
    imagedocs,
    open_client,
    run_mod,
)
from liner.common import PROCESS_URL, RESOURCES_URL, SPEC_URL, LinerClientError
from liner.errors import NotFound, Unavailable
from liner.format import table

if TYPE_CHECKING:
    from liner import events as eventdocs
    from liner import images as imagedocs
    from liner import run as run_mod
    from liner.client import AnyValue, Client, Process


@click.group(cls=AliasGroup)
def containers() -> None:
    """Manage containers (aliases: container, c)."""


@containers.command("ls")
@click.option("--quiet", "-q", is_flag=True, help="print only the ids")
@click.argument("filters", nargs=-1, metavar="[FILTER]...")
def containers_ls(quiet: bool, filters: tuple[str, ...]) -> None:
    """List containers, optionally matching filters (e.g. image==REF, labels.KEY==VALUE)."""
    found = sorted(open_client().containers(filters), key=lambda c: c.id)
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

    c = open_client().get_container(container_id)
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
    client = open_client()
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
            fail_item(e.message)
            failed = True
        else:
            click.echo(container_id)
    exit_if(failed)
