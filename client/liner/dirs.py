"""Where a running linerd keeps its files, as it reports them over the API.

Introspection's plugin list carries them: ("io.containerd.metadata.v1", "sqlite") exports
`root` and `state`, ("io.containerd.content.v1", "content") exports `root` (<root>/content).
Asking the daemon (not assuming /var/lib/liner) is what makes `liner -a OTHER.sock check` and
`liner logs` look at that daemon's files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from liner.client import Client, PluginInfo

METADATA = ("io.containerd.metadata.v1", "sqlite")
CONTENT = ("io.containerd.content.v1", "content")


@dataclass(frozen=True, slots=True)
class DaemonDirs:
    root: Path | None
    state: Path | None
    content: Path | None


def _export(plugins: list[PluginInfo], kind: tuple[str, str], key: str) -> Path | None:
    for p in plugins:
        if (p.type, p.id) == kind and p.exports.get(key):
            return Path(p.exports[key])
    return None


def daemon_dirs(plugins: list[PluginInfo]) -> DaemonDirs:
    """The directories in a plugin list; None for one the daemon does not report."""
    return DaemonDirs(
        root=_export(plugins, METADATA, "root"),
        state=_export(plugins, METADATA, "state"),
        content=_export(plugins, CONTENT, "root"),
    )


def state_dir(client: Client) -> Path:
    """The daemon's state directory; LookupError if it does not say (an older linerd)."""
    state = daemon_dirs(client.plugins()).state
    if state is None:
        raise LookupError(f"linerd at {client.address} does not report its state directory")
    return state
