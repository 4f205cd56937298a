"""liner: the client library and the `liner` command line for linerd."""

from __future__ import annotations

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
