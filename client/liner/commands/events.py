"""`liner events`."""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING

import click

from liner.commands.base import eventdocs, open_client

if TYPE_CHECKING:
    from liner import events as eventdocs


@click.command("events")
@click.argument("filters", nargs=-1, metavar="[FILTER]...")
def events(filters: tuple[str, ...]) -> None:
    """Print events as they happen, of every namespace (until Ctrl-C), one line each:
    `<timestamp> <namespace> <topic> <payload as JSON>`. Filters as containerd's, e.g.
    topic==/tasks/exit or namespace==default."""
    import json

    stream = open_client().subscribe(filters)
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
