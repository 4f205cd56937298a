"""liner: the client library and the `liner` command line for linerd."""

from __future__ import annotations

from liner.client import (
    Client,
    ContentInfo,
    IngestStatus,
    Lease,
    LinerClientError,
    Namespace,
    Resource,
    ServerInfo,
    VersionInfo,
)
from liner.version import __version__

__all__ = [
    "Client",
    "ContentInfo",
    "IngestStatus",
    "Lease",
    "LinerClientError",
    "Namespace",
    "Resource",
    "ServerInfo",
    "VersionInfo",
    "__version__",
]
