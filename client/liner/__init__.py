"""liner: the client library and the `liner` command line for linerd."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from liner.client import (
        Client,
        Container,
        ContentInfo,
        Event,
        ExitStatus,
        IngestStatus,
        Lease,
        LinerClientError,
        Namespace,
        Process,
        Resource,
        ServerInfo,
        VersionInfo,
    )
    from liner.version import __version__


def __getattr__(name: str) -> Any:
    # Loaded on first use: `import liner.cli` must not import grpc for `liner --help`.
    if name == "__version__":
        from liner import version

        return version.__version__
    if name in __all__:
        from liner import client

        return getattr(client, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Client",
    "Container",
    "ContentInfo",
    "Event",
    "ExitStatus",
    "IngestStatus",
    "Lease",
    "LinerClientError",
    "Namespace",
    "Process",
    "Resource",
    "ServerInfo",
    "VersionInfo",
    "__version__",
]
